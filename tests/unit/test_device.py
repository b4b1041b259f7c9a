"""Device choice: auto falls back to the CPU here; unusable or unknown names are ConfigErrors."""

import pytest
import torch

from digitflow.device import bf16_autocast_helps, resolve_device, training_precision
from digitflow.errors import ConfigError

no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator is available here"
)


@no_accelerator
def test_auto_is_cpu_without_accelerator():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_auto_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("name", ["cpu", "cpu:0"])
def test_cpu(name):
    assert resolve_device(name).type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_when_unavailable(name):
    with pytest.raises(ConfigError, match="CUDA is not available") as info:
        resolve_device(name)
    assert "\n" not in str(info.value)


def test_cuda_index_beyond_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_mps_when_unavailable():
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["garbage", "CPU", "gpu", "cuda:abc", "", "cpu:x"])
def test_garbage_names(name):
    with pytest.raises(ConfigError, match="unknown device") as info:
        resolve_device(name)
    msg = str(info.value)
    assert "\n" not in msg
    assert "auto, cpu, cuda, cuda:N or mps" in msg


@pytest.mark.parametrize("name", ["meta", "xpu", "hpu"])
def test_devices_torch_parses_but_training_cannot_use(name):
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_bf16_autocast_on_the_cpu_only_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert bf16_autocast_helps(torch.device("cpu")) is expected


def test_bf16_autocast_without_the_cpu_probes_is_off(monkeypatch):
    """The probes are private torch API: if a torch release drops them, fall back to float32."""
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert bf16_autocast_helps(torch.device("cpu")) is False


def test_bf16_autocast_on_cuda_but_not_mps():
    assert bf16_autocast_helps(torch.device("cuda")) is True
    assert bf16_autocast_helps(torch.device("mps")) is False


def test_training_precision_names_what_the_engine_does(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert training_precision(torch.device("cpu"), amp=True) == "bfloat16 autocast"
    assert training_precision(torch.device("cpu"), amp=False) == "float32"
    assert training_precision(torch.device("mps"), amp=True) == "float32"
