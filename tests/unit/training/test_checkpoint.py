"""Checkpoints: atomic round trip with weights_only, and one-line errors for everything else."""

import random

import pytest
import torch

from digitflow.errors import CheckpointError
from digitflow.models import LeNet
from digitflow.training.checkpoint import FORMAT_VERSION, load_checkpoint, load_model_state, save_checkpoint


def _state(model: torch.nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    opt.step()  # momentum buffers: optimizer state with tensors in it
    return {
        "model_name": type(model).__name__,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": None,
        "config": {"batch_size": 32, "optimizer": {"name": "SGD", "kwargs": {"lr": 0.1}}, "extra": ["a"]},
        "epoch": 3,
        "history": [{"epoch": 1, "loss": 0.5}],
    }


def test_round_trip_is_atomic_and_complete(tmp_path):
    torch.manual_seed(0)
    model = LeNet()
    state = _state(model)
    path = tmp_path / "sub" / "ckpt.pt"  # parent folder is created
    assert save_checkpoint(path, state) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temp file left behind

    loaded = load_checkpoint(path, model_name="LeNet")
    assert loaded["format_version"] == FORMAT_VERSION
    for key in ("model_name", "scheduler", "config", "epoch", "history"):
        assert loaded[key] == state[key]
    assert loaded["model"].keys() == state["model"].keys()
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert torch.equal(
        loaded["optimizer"]["state"][0]["momentum_buffer"], state["optimizer"]["state"][0]["momentum_buffer"]
    )

    torch.manual_seed(1)
    other = LeNet()
    load_model_state(other, loaded["model"])
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


def test_saving_again_replaces_the_file(tmp_path):
    model = LeNet()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {**_state(model), "epoch": 1})
    save_checkpoint(path, {**_state(model), "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_file_loads_with_plain_weights_only_torch_load(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", _state(LeNet()))
    raw = torch.load(path, weights_only=True)
    assert raw["model_name"] == "LeNet"
    assert raw["epoch"] == 3


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint file either


def _random_bytes(seed: int) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(rng.randint(1, 5000))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello world\n",
        b"PK\x03\x04" + bytes(range(256)),  # a zip header and garbage
        b"\x80\x02" + bytes(range(100)),  # a pickle header and garbage
        *[_random_bytes(seed) for seed in range(24)],
    ],
    ids=lambda c: f"{len(c)}B",
)
def test_foreign_bytes_are_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a digitflow checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_plain_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError, match="is not a digitflow checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="is not a digitflow checkpoint"):
        load_checkpoint(path)


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(LeNet(), path)  # a whole pickled module: not loadable with weights_only
    with pytest.raises(CheckpointError, match="is not a digitflow checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_model_name_mismatch_names_both(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", {**_state(LeNet()), "model_name": "ResNet"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model_name="LeNet")
    assert "'ResNet'" in str(info.value)
    assert "'LeNet'" in str(info.value)
    assert load_checkpoint(path)["model_name"] == "ResNet"  # no name asked for: no check


def test_mismatched_state_dict_is_a_one_line_error(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", _state(LeNet(num_classes=5)))
    state = load_checkpoint(path, model_name="LeNet")
    model = LeNet(num_classes=10)
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, state["model"])
    msg = str(info.value)
    assert "\n" not in msg
    assert "LeNet" in msg
    assert "size mismatch" in msg
    assert len(msg) < 400

    del state["model"]["classifier.3.bias"]
    with pytest.raises(CheckpointError, match="Missing key"):
        load_model_state(LeNet(num_classes=5), state["model"])
