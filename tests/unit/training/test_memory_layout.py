"""contiguous_batch_norm: same values and layouts as the plain layer, computed on contiguous memory
(forward and backward) exactly where the channels-last bfloat16 CPU kernel is slow, nothing left behind."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from digitflow.training.memory_layout import batch_norm_runs_slow, contiguous_batch_norm

CL = torch.channels_last


@pytest.fixture(autouse=True)
def two_threads():
    """The slow kernel needs two threads; pin them so the tests mean the same on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _input(channels: int, dtype=torch.bfloat16) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.relu(torch.randn(8, channels, 6, 6) * 2 + 0.5).to(dtype).contiguous(memory_format=CL)


def _layer(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


class BackwardLayouts(TorchDispatchMode):
    """Records whether each batch-norm backward kernel got a channels-last gradient."""

    def __init__(self):
        super().__init__()
        self.channels_last = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.native_batch_norm_backward.default:
            self.channels_last.append(not args[0].is_contiguous())
        return func(*args, **(kwargs or {}))


@pytest.fixture
def seen_layouts(monkeypatch):
    """Whether each F.batch_norm call got channels-last memory (True) or contiguous memory (False)."""
    seen = []
    real = F.batch_norm

    def spy(x, *args, **kwargs):
        seen.append(not x.is_contiguous())
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", spy)  # the module nn.BatchNorm2d calls as F: torch.nn.functional
    return seen


def test_slow_kernel_is_predicted_for_bf16_channels_last_with_odd_channel_counts():
    assert batch_norm_runs_slow(_input(20), 20)
    assert batch_norm_runs_slow(_input(50), 50)
    assert not batch_norm_runs_slow(_input(16), 16)  # a multiple of 16: the fast kernel
    assert not batch_norm_runs_slow(_input(20, torch.float32), 20)
    assert not batch_norm_runs_slow(_input(20).contiguous(), 20)
    assert not batch_norm_runs_slow(torch.zeros(8, 20, 1, 1, dtype=torch.bfloat16), 20)  # both layouts at once
    torch.set_num_threads(1)
    assert not batch_norm_runs_slow(_input(20), 20)  # no second thread, no false sharing


def test_backward_runs_on_contiguous_memory_and_hands_back_channels_last():
    x = _input(20).requires_grad_()
    bn = _layer(20)
    with contiguous_batch_norm(bn):
        y = bn(x * 1)  # a non-leaf, like a conv's output (a leaf's .grad is re-laid-out by autograd)
    assert y.is_contiguous(memory_format=CL)
    assert not y.is_contiguous()
    with BackwardLayouts() as seen:
        (grad_x,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert seen.channels_last == [False]
    assert grad_x.is_contiguous(memory_format=CL)
    assert not grad_x.is_contiguous()


def test_same_values_gradients_and_statistics_as_the_plain_layer(seen_layouts):
    x = _input(20)
    grad = torch.randn_like(x)
    plain, fast = _layer(20), _layer(20)
    fast.load_state_dict(plain.state_dict())

    x_plain = x.detach().requires_grad_()
    y_plain = plain(x_plain)
    y_plain.backward(grad)
    assert seen_layouts == [True]

    x_fast = x.detach().requires_grad_()
    with contiguous_batch_norm(fast):
        y_fast = fast(x_fast)
    y_fast.backward(grad)
    assert seen_layouts == [True, False]  # computed on contiguous memory

    assert y_fast.dtype == torch.bfloat16
    # Same values to bfloat16 precision (two kernels, two summation orders).
    torch.testing.assert_close(y_fast.float(), y_plain.float(), atol=0.02, rtol=0.01)
    assert x_fast.grad is not None
    assert x_plain.grad is not None
    torch.testing.assert_close(x_fast.grad.float(), x_plain.grad.float(), atol=0.02, rtol=0.01)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, atol=0.05, rtol=0.01)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad, atol=0.05, rtol=0.01)
    torch.testing.assert_close(fast.running_mean, plain.running_mean, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fast.running_var, plain.running_var, atol=1e-3, rtol=1e-3)
    assert fast.num_batches_tracked is not None
    assert int(fast.num_batches_tracked) == 1


@pytest.mark.parametrize(
    ("channels", "dtype"), [(16, torch.bfloat16), (20, torch.float32)], ids=["16-channels", "float32"]
)
def test_inputs_with_a_fast_kernel_are_left_alone(seen_layouts, channels, dtype):
    bn = _layer(channels)
    with contiguous_batch_norm(bn):
        y = bn(_input(channels, dtype))
    assert seen_layouts == [True]
    assert y.is_contiguous(memory_format=CL)


def test_layers_are_restored_on_exit_and_after_an_error():
    inner = nn.Sequential(nn.BatchNorm2d(20))
    model = nn.Sequential(nn.Conv2d(1, 20, 3), nn.BatchNorm2d(20), inner)
    bns = [model[1], inner[0]]
    with contiguous_batch_norm(model):
        assert all("forward" in vars(bn) for bn in bns)
    assert not any("forward" in vars(bn) for bn in bns)

    with pytest.raises(RuntimeError, match="boom"), contiguous_batch_norm(model):
        raise RuntimeError("boom")
    assert not any("forward" in vars(bn) for bn in bns)


def test_a_layer_with_its_own_forward_is_left_alone():
    bn = nn.BatchNorm2d(20)
    own = lambda x: x  # noqa: E731
    vars(bn)["forward"] = own  # an instance forward, set the way contiguous_batch_norm sets its own
    with contiguous_batch_norm(bn), contiguous_batch_norm(bn):
        assert bn.forward is own
    assert bn.forward is own
