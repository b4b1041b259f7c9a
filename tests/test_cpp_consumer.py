"""The exported model outside Python: the C++ consumer (consumers/cpp, built by scripts/build_cpp.py) against
Python on the real MNIST test files, and the AOTInductor package in Python's torch-only verifier and in C++.

The build (a minute or two on two busy cores the first time) is reused while its sources, the torch wheel and
the compiler stay the same (build/cpp/<hash>), so a session pays for it once and later sessions not at all.
Skipped, saying why, without CMake, a C++ compiler or zlib's headers, or without ../shared/data.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import build_cpp
import numpy as np
import pytest
import torch

from digitflow.data.formats import read_idx_images, read_idx_labels
from digitflow.data.framing import to_model_input
from digitflow.export.aoti import compiler_missing, export_aoti
from digitflow.export.exporters import eager_logits, export_program, export_torchscript, load_export, verify_exports
from digitflow.export.inputs import for_export
from digitflow.models import LeNet
from tests.conftest import SHARED_DATA
from tests.fakedata import fake_digits, write_idx

MNIST = SHARED_DATA / "MNIST" / "raw"
TEST_IMAGES, TEST_LABELS = MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(scope="module")
def program() -> Path:
    reason = build_cpp.missing()
    if reason:
        pytest.skip(f"the C++ consumer cannot be built here: {reason}")
    return build_cpp.build()  # a BuildError where the tools are present is a failure, not a skip


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 MNIST test images as the model takes them (float, / 255) and their labels."""
    if not TEST_IMAGES.is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (see docs/data.md: where files go, and offline use)")
    return to_model_input(read_idx_images(TEST_IMAGES)), read_idx_labels(TEST_LABELS)


@pytest.fixture(scope="module")
def trained(mnist) -> torch.nn.Module:
    """LeNet after one pass over the first 2,000 test images (over 90% accurate on the 10,000: its predictions
    mean something; which images it saw does not matter to a comparison of two runtimes), inside the wrapper
    every export gets; in eval mode."""
    images, labels = mnist
    torch.manual_seed(0)
    model = LeNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for batch in torch.arange(2000).split(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    return for_export(model.eval())


def run(program: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=120)


def classified(stdout: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The consumer's lines "INDEX PREDICTED LABEL LOGIT..." as (predictions, logits), and its accuracy line."""
    lines = stdout.splitlines()
    rows = np.array([line.split() for line in lines[:-1]], dtype=np.float64)
    assert (rows[:, 0] == np.arange(len(rows))).all()
    return rows[:, 1].astype(np.int64), rows[:, 3:], lines[-1]


@pytest.mark.slow
def test_cpp_classifies_every_mnist_test_image_as_python_does(program, mnist, trained, tmp_path):
    images, labels = mnist
    lenet = export_torchscript(trained, images[:1], tmp_path / "lenet.pt")
    result = run(program, lenet, TEST_IMAGES, TEST_LABELS, "--logits", "--threads", "1")
    assert result.returncode == 0, result.stderr
    predicted, logits, accuracy = classified(result.stdout)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the consumer ran: the same kernels, the same sums
    try:
        scripted = load_export(lenet)
        with torch.inference_mode():
            expected = torch.cat([scripted(batch) for batch in images.split(256)])  # the consumer's batches
    finally:
        torch.set_num_threads(threads)
    assert len(predicted) == 10_000
    assert (predicted == expected.argmax(1).numpy()).all()  # every image, so the same accuracy
    assert np.abs(logits - expected.numpy()).max() <= 1e-6
    correct = int((expected.argmax(1) == labels).sum())
    assert correct > 9_000, correct
    assert accuracy == f"accuracy {correct / 10_000:.4f} ({correct}/10000)"


@pytest.mark.slow
def test_the_aoti_package_gives_eager_logits_in_python_and_in_cpp(program, mnist, trained, tmp_path):
    reason = compiler_missing()
    if reason:
        pytest.skip(reason)
    images = mnist[0]
    package = export_aoti(trained, images[:1], tmp_path / "lenet.aoti.pt2")  # tens of seconds
    eager = eager_logits(trained, images[:1000])
    [check] = verify_exports([package], images[:256], eager[:256], max_abs_diff=1e-4)  # a torch-only Python
    assert check["mismatched_predictions"] == 0

    result = run(program, package, TEST_IMAGES, "--limit", "1000", "--logits", "--batch", "100")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()  # no label file: "INDEX PREDICTED LOGIT..." for each image
    rows = np.array([line.split() for line in lines], dtype=np.float64)
    assert len(rows) == 1000
    assert (rows[:, 1] == eager.argmax(1).numpy()).all()
    assert np.abs(rows[:, 2:] - eager.numpy()).max() <= 1e-4


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_torchscript(
        for_export(LeNet().eval()), torch.rand(1, 1, 28, 28), tmp_path_factory.mktemp("m") / "m.pt"
    )


@pytest.mark.slow
def test_cpp_refuses_what_it_cannot_classify_in_one_line(program, untrained, tmp_path):
    images, labels = fake_digits(6)
    idx = write_idx(tmp_path / "images-idx3-ubyte", images)
    small = write_idx(tmp_path / "usps-idx3-ubyte", fake_digits(3, size=(16, 16))[0])
    few_labels = write_idx(tmp_path / "labels-idx1-ubyte", labels[:4])
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(idx.read_bytes()[:-10])
    program_file = export_program(LeNet(), torch.rand(1, 1, 28, 28), tmp_path / "lenet.pt2")
    cases = [
        (
            (untrained, small),
            "failed on the images of",
            "this model takes images of shape (N, 1, 28, 28), got [3, 1, 16, 16]",
        ),
        ((untrained, idx, few_labels), "holds 4 labels for the 6 images", ""),
        ((untrained, truncated), "truncated: shorter than the 4704 bytes its header declares", ""),
        ((untrained, few_labels), "has 1 dimensions, expected 3", ""),
        ((program_file, idx), "is a torch.export program, which only Python loads", "lenet.aoti.pt2"),
        ((tmp_path / "absent.pt", idx), "cannot load", "absent.pt"),
    ]
    for args, says, also in cases:
        result = run(program, *args)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith("digitflow-classify: error: ")
        assert result.stderr.count("\n") == 1, result.stderr
        assert says in result.stderr
        assert also in result.stderr
    usage = run(program, untrained, idx, "--batch", "0")
    assert usage.returncode == 2
    assert "--batch takes a whole number of at least 1, got '0' (--help for usage)" in usage.stderr
    help_text = run(program, "--help").stdout
    assert "float32 images (N, 1, 28, 28) = bytes / 255, pixels in [0, 1]" in help_text  # what the model is given


@pytest.mark.slow
def test_cpp_bench_times_one_image_and_a_batch_and_the_build_is_reused(program, untrained, tmp_path):
    idx = write_idx(tmp_path / "images-idx3-ubyte", fake_digits(10)[0])  # the batch of 256 repeats them
    result = run(program, untrained, idx, "--bench", "--calls", "20", "--passes", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    latency = re.search(r"latency batch 1: median ([\d.]+) ms, p99 ([\d.]+) ms over 20 calls", result.stdout)
    throughput = re.search(r"throughput batch 256: (\d+) images/s \(median of 2 passes\)", result.stdout)
    assert latency, result.stdout
    assert throughput, result.stdout
    assert 0 < float(latency[1]) <= float(latency[2])
    assert int(throughput[1]) > 0
    built = program.stat().st_mtime_ns
    assert build_cpp.build() == program  # nothing changed: the same build, not built again
    assert program.stat().st_mtime_ns == built


def test_a_missing_tool_is_the_reason_to_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    monkeypatch.delenv("CXX", raising=False)
    assert build_cpp.missing() == "CMake not found on PATH (apt-get install cmake)"
    with pytest.raises(build_cpp.BuildError, match="CMake not found"):
        build_cpp.build(tmp_path / "build")
