"""Export to TorchScript / torch.export, verification in a torch-only subprocess, latency metrics.

Each verification starts a fresh Python that imports torch (~1.5 s, ~3 s for .pt2), so the files
are exported once per module and the subprocess round trips are kept to the ones that matter.
"""

import ast
import math
import time
import warnings
from pathlib import Path

import pytest
import torch

from digitflow.errors import ConfigError, ExportError
from digitflow.export import verifier
from digitflow.export.exporters import (
    compare_latency,
    eager_logits,
    export_program,
    export_torchscript,
    load_export,
    measure_latency,
    torchscript_deprecation_silenced,
    verify_export,
    verify_exports,
)
from digitflow.export.inputs import for_export
from digitflow.models import LeNet, MiniVGG


@pytest.fixture(scope="module")
def model() -> LeNet:
    torch.manual_seed(0)
    return LeNet()  # untrained, left in training mode on purpose: export must use eval mode


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(model, images) -> torch.Tensor:
    return eager_logits(model, images)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    example = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))  # batch 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    files = {
        "script": export_torchscript(model, example, folder / "model.pt"),
        "trace": export_torchscript(model, example, folder / "traced.pt", mode="trace"),
        "program": export_program(model, example, folder / "model.pt2"),
    }
    # The caller's model is untouched: same mode, same weights and batch-norm statistics.
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return files


@pytest.mark.parametrize("kind", ["script", "trace", "program"])
def test_round_trip_in_fresh_process(exported, images, reference, kind):
    path = exported[kind]
    assert path.is_file()
    assert path.suffix == (".pt2" if kind == "program" else ".pt")
    # 5 images through a file exported from a 1-image example: the batch dimension is dynamic.
    result = verify_export(path, images, reference)
    assert result["max_abs_diff"] <= 1e-5
    assert result["mismatched_predictions"] == 0
    assert result["num_images"] == 5


@pytest.mark.parametrize(
    ("kind", "corrupt"),
    [
        ("script", lambda data: data[: len(data) // 2]),  # truncated
        ("program", lambda data: b"\x00" * 64 + data[64:]),  # overwritten header bytes
    ],
    ids=["pt-truncated", "pt2-bad-header"],
)
def test_corrupted_file_fails_verification(exported, images, reference, tmp_path, kind, corrupt):
    source = exported[kind]
    broken = tmp_path / f"broken{source.suffix}"
    broken.write_bytes(corrupt(source.read_bytes()))
    with pytest.raises(ExportError) as info:
        verify_export(broken, images, reference)
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 500
    assert str(broken) in message
    assert "cannot load" in message


def test_one_process_verifies_every_file_of_an_export(exported, images, reference, tmp_path):
    results = verify_exports([exported["script"], exported["program"]], images, reference)
    assert [r["num_images"] for r in results] == [5, 5]
    assert all(r["max_abs_diff"] <= 1e-5 for r in results)
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ExportError) as info:  # the file that failed is named, not its neighbour
        verify_exports([exported["script"], broken], images, reference)
    assert str(broken) in str(info.value)
    assert "cannot load" in str(info.value)


def test_the_second_builtin_model_scripts_and_exports_and_both_files_verify(images, tmp_path):
    torch.manual_seed(0)
    model = for_export(MiniVGG())  # as the pipeline writes it; training mode on purpose, as above
    example = images[:1]
    files = [
        export_torchscript(model, example, tmp_path / "minivgg.pt"),
        export_program(model, example, tmp_path / "minivgg.pt2"),
    ]
    results = verify_exports(files, images, eager_logits(model, images))  # one torch-only process for both
    assert [r["mismatched_predictions"] for r in results] == [0, 0]
    assert all(r["max_abs_diff"] <= 1e-5 for r in results)
    assert load_export(files[1])(images).shape == (5, 10)


def test_each_file_can_have_its_own_limit(exported, images, reference):
    files, shifted = [exported["script"], exported["program"]], reference + 1e-3  # no prediction changes
    # the files are compared in order: model.pt passes within its 1e-2, model.pt2 fails its own 1e-5
    with pytest.raises(ExportError, match=r"model\.pt2 disagrees .* max \|logit diff\| 0\.001 \(limit 1e-05\)"):
        verify_exports(files, images, shifted, max_abs_diff=[1e-2, 1e-5])
    with pytest.raises(ConfigError, match="1 logit limits for 2 exported files"):
        verify_exports(files, images, reference, max_abs_diff=[1e-5])


def test_perturbed_reference_fails_with_figures(exported, images, reference):
    perturbed = reference + 1e-3
    second = perturbed[0].argsort(descending=True)[1]
    perturbed[0, second] = perturbed[0].max() + 1.0  # row 0 now predicts another class
    with pytest.raises(ExportError) as info:
        verify_export(exported["script"], images, perturbed)
    message = str(info.value)
    assert "\n" not in message
    assert "on 5 images" in message
    assert "limit 1e-05" in message
    assert "1 different predictions" in message
    assert "max |logit diff|" in message


def test_missing_file_and_bad_arguments(images, reference, tmp_path):
    with pytest.raises(ExportError, match="not found"):
        verify_export(tmp_path / "absent.pt", images, reference)
    with pytest.raises(ConfigError, match=r"'\.pt'.*'\.pt2'"):
        verify_export(tmp_path / "model.onnx", images, reference)
    with pytest.raises(ConfigError, match="reference logits"):
        verify_export(tmp_path / "absent.pt", images, reference[:3])
    with pytest.raises(ConfigError, match="float"):
        verify_export(tmp_path / "absent.pt", (images * 255).to(torch.uint8), reference)


def test_unknown_mode_lists_valid_modes(model, tmp_path):
    with pytest.raises(ConfigError) as info:
        export_torchscript(model, torch.rand(1, 1, 28, 28), tmp_path / "m.pt", mode="onnx")
    assert "'onnx'" in str(info.value)
    assert "script, trace" in str(info.value)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 28, 28), (1, 28, 28)])
def test_image_size_the_model_cannot_take(model, tmp_path, shape):
    for export in (
        lambda x: export_torchscript(model, x, tmp_path / "m.pt"),
        lambda x: export_program(model, x, tmp_path / "m.pt2"),
    ):
        with pytest.raises(ConfigError) as info:
            export(torch.rand(*shape))
        message = str(info.value)
        assert "\n" not in message
        assert "(N, 1, 28, 28)" in message
        assert "LeNet" in message
    assert not list(tmp_path.iterdir())


def test_wrong_suffix(model, tmp_path):
    with pytest.raises(ConfigError, match=r"'\.pt'"):
        export_torchscript(model, torch.rand(1, 1, 28, 28), tmp_path / "m.pt2")
    with pytest.raises(ConfigError, match=r"'\.pt2'"):
        export_program(model, torch.rand(1, 1, 28, 28), tmp_path / "m.pt")


def test_compare_latency_keys(model, exported):
    metrics = compare_latency(model, exported["script"], load_export(exported["program"]), repeats=2, warmup=1)
    assert set(metrics) == {f"export/{name}_ms_b{b}" for name in ("eager", "torchscript", "program") for b in (1, 256)}
    assert all(math.isfinite(v) and v > 0 for v in metrics.values())
    traced = compare_latency(model, exported["trace"], batch_sizes=(3,), repeats=1, warmup=0)
    assert set(traced) == {"export/eager_ms_b3", "export/torchscript_ms_b3"}


def test_measure_latency_leaves_model_alone(model):
    result = measure_latency(model, batch_sizes=(1, 4), repeats=2, warmup=0)
    assert set(result) == {1, 4}
    assert all(v > 0 for v in result.values())
    assert model.training
    with pytest.raises(ConfigError):
        measure_latency(model, batch_sizes=(0,), repeats=1)


def test_torchscript_deprecation_is_filtered_narrowly(model, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_torchscript(model, torch.rand(1, 1, 28, 28), tmp_path / "m.pt")
        load_export(tmp_path / "m.pt")
        with torchscript_deprecation_silenced():
            warnings.warn("some other future change", FutureWarning, stacklevel=1)
            warnings.warn("`torch.jit.script` is deprecated. Please switch to", DeprecationWarning, stacklevel=1)
    assert not any(w.category is FutureWarning and "torch.jit" in str(w.message) for w in caught)
    assert "some other future change" in [str(w.message) for w in caught]  # only that one
    assert any(w.category is DeprecationWarning for w in caught)  # and only as FutureWarning


def test_verifier_refuses_project_imports():
    finder = verifier._ForbidProject()
    for name in ("digitflow", "digitflow.export.exporters", "flows.cli", "tasks"):
        with pytest.raises(ImportError):
            finder.find_spec(name)
    assert finder.find_spec("torch") is None
    tree = ast.parse(Path(verifier.__file__).read_text())
    nodes = list(ast.walk(tree))
    imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
    # A relative import (no module) counts as "", which no allowed name matches.
    imported |= {(n.module or "").split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom)}
    stdlib = {
        "contextlib",
        "importlib",
        "json",
        "os",
        "sys",
        "warnings",
        "__future__",
        "collections",
        "types",
        "typing",
    }
    assert imported <= {"torch", *stdlib}, imported  # torch + stdlib only


def test_latency_stops_at_its_budget():
    passes = []

    def slow(images):
        passes.append(1)
        time.sleep(0.02)
        return images

    ms = measure_latency(slow, batch_sizes=(1,), repeats=100, warmup=0, budget_s=0.05)
    assert 5 <= len(passes) < 100  # at least 5 passes, then the budget ends it
    assert ms[1] >= 20
    passes.clear()
    measure_latency(slow, batch_sizes=(1,), repeats=5, warmup=100, budget_s=0.05)
    assert len(passes) < 20  # the warm-up stops at half the budget (about 2 passes), then the 5 timed ones
