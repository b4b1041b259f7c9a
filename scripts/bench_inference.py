"""Inference figures of the exported model, by format and runtime: `make bench-inference`.

    python scripts/bench_inference.py                                   # a fresh LeNet, exported here
    python scripts/bench_inference.py --export-dir outputs/exports/RUN  # a finished run's files
    python scripts/bench_inference.py --data-dir ../shared/data --threads 1 --calls 2000

For eager PyTorch, the TorchScript file (lenet.pt), the torch.export program (lenet.pt2) and the AOTInductor
package (lenet.aoti.pt2), in Python, and for the two that C++ loads (lenet.pt, lenet.aoti.pt2) in the C++
consumer (`digitflow-classify --bench`, built by `make cpp`): the latency of one image (median and p99 over
--calls calls, after 100 warm-up calls) and the throughput at batch 256 (images per second over the median
of --passes passes, after 10 warm-up passes; Python warms up less when asked for fewer calls or passes than
that, for a quick trial). Python and C++ time the same way, on the same images: the MNIST
test images in --data-dir, else random bytes. Without --export-dir, a LeNet with seeded random weights is
exported in every format (the AOTInductor compile takes tens of seconds; weights do not change the time);
with it, the run's files are timed, and its eager model is LeNet with lenet.pt's weights (a package the run
did not write is compiled here from them). Latency depends on the machine's load: run it on a quiet one.
`--device cuda` times the Python formats on a GPU (the AOTInductor package compiled for it); the C++
consumer runs on the CPU only.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import build_cpp
import numpy as np
import torch

from digitflow.data.formats import read_idx_images
from digitflow.data.framing import to_model_input
from digitflow.export.aoti import compiler_missing, export_aoti
from digitflow.export.exporters import export_program, export_torchscript, load_export
from digitflow.export.inputs import PixelInput, for_export
from digitflow.models import LeNet

FORMATS = {"torchscript": "lenet.pt", "export": "lenet.pt2", "aoti": "lenet.aoti.pt2"}
LABELS = {"eager": "eager", "torchscript": "TorchScript", "export": "torch.export", "aoti": "AOTInductor"}
WARMUP_CALLS, WARMUP_PASSES, BATCH = 100, 10, 256


@dataclass(frozen=True)
class Timing:
    median_ms: float  # one image
    p99_ms: float
    images_per_s: float  # batch 256


def p99(sorted_seconds: list[float]) -> float:
    """The nearest-rank 99th percentile (the ceil(0.99 n)-th fastest), as the C++ consumer computes it."""
    return sorted_seconds[max(math.ceil(0.99 * len(sorted_seconds)), 1) - 1]


def time_python(
    model: Callable[[torch.Tensor], torch.Tensor], one: torch.Tensor, batch: torch.Tensor, calls: int, passes: int
) -> Timing:
    """The consumer's --bench in Python: each call timed alone (synchronised on a GPU), under inference mode."""
    cuda = one.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(images: torch.Tensor, warmup: int, n: int) -> list[float]:
        for _ in range(warmup):
            model(images)
        sync()
        seconds = []
        for _ in range(n):
            start = time.perf_counter()
            model(images)
            sync()
            seconds.append(time.perf_counter() - start)
        return sorted(seconds)

    with torch.inference_mode():
        latency = timed(one, min(WARMUP_CALLS, calls), calls)  # fewer warm-ups only for a short trial
        throughput = timed(batch, min(WARMUP_PASSES, passes), passes)
    return Timing(statistics.median(latency) * 1e3, p99(latency) * 1e3, len(batch) / statistics.median(throughput))


def time_cpp(program: Path, model: Path, images: Path, calls: int, passes: int, threads: int | None) -> Timing:
    """``digitflow-classify MODEL IMAGES --bench``, its two lines parsed."""
    command = [str(program), str(model), str(images), "--bench", "--calls", str(calls), "--passes", str(passes)]
    if threads:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"{program.name} exited with {result.returncode}")
    latency = re.search(r"median ([\d.]+) ms, p99 ([\d.]+) ms", result.stdout)
    throughput = re.search(r"batch 256: ([\d.]+) images/s", result.stdout)
    if not latency or not throughput:
        raise RuntimeError(f"unexpected output from {program.name}: {result.stdout!r}")
    return Timing(float(latency[1]), float(latency[2]), float(throughput[1]))


def test_images(data_dir: Path, folder: Path) -> tuple[Path, torch.Tensor]:
    """The MNIST test images (IDX file, and as the model takes them), else 256 images of random bytes."""
    mnist = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    if mnist.is_file():
        return mnist, to_model_input(read_idx_images(mnist))
    print(f"no MNIST test images in {data_dir}: timing random images instead", file=sys.stderr)
    pixels = np.random.default_rng(0).integers(0, 256, size=(BATCH, 28, 28), dtype=np.uint8)
    path = folder / "random-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in pixels.shape) + pixels.tobytes())
    return path, to_model_input(torch.from_numpy(pixels))


def eager_model(export_dir: Path | None) -> PixelInput:
    """LeNet as the exporters wrap it: a run's weights (from its lenet.pt) or seeded random ones."""
    torch.manual_seed(0)
    model = for_export(LeNet().eval())
    if export_dir is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated: this is TorchScript
            state = torch.jit.load(str(export_dir / FORMATS["torchscript"]), map_location="cpu").state_dict()
        model.load_state_dict(
            state if "anchor" in state else {"anchor": model.anchor, **{f"model.{k}": v for k, v in state.items()}}
        )
    return model.eval()


def exported_files(model: PixelInput, export_dir: Path | None, folder: Path, example: torch.Tensor) -> dict[str, Path]:
    """Each format's file: the run's where it wrote one, else exported here (AOTInductor: if a compiler is found)."""
    files: dict[str, Path] = {}
    for name, filename in FORMATS.items():
        if export_dir is not None and (export_dir / filename).is_file():
            files[name] = export_dir / filename
        elif name == "torchscript":
            files[name] = export_torchscript(model, example, folder / filename)
        elif name == "export":
            files[name] = export_program(model, example, folder / filename)
        elif compiler_missing():
            print(f"AOTInductor left out: {compiler_missing()}", file=sys.stderr)
        else:
            print("compiling the AOTInductor package (tens of seconds)...", file=sys.stderr, flush=True)
            files[name] = export_aoti(model, example, folder / filename)
    return files


def cuda_runners(
    model: PixelInput, files: dict[str, Path], example: torch.Tensor, folder: Path
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The Python formats on the GPU: the modules moved there, the AOTInductor package compiled for it."""
    from torch import _inductor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "eager": model.to("cuda"),
            "torchscript": torch.jit.load(str(files["torchscript"]), map_location="cuda").eval(),
        }
    program = torch.export.export(
        model, (example.expand(2, -1, -1, -1).cuda(),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    runners["export"] = program.module()
    if "aoti" in files:
        path = _inductor.aoti_compile_and_package(program, package_path=str(folder / "lenet-cuda.aoti.pt2"))
        runners["aoti"] = _inductor.aoti_load_package(path)
    return runners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", type=Path, help="a run's exported files (outputs/exports/<run id>)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DIGITFLOW_DATA_DIR") or "data"), help="the official files"
    )
    parser.add_argument("--calls", type=int, default=1000, help="timed calls of one image (default 1000)")
    parser.add_argument("--passes", type=int, default=50, help="timed passes of a batch of 256 (default 50)")
    parser.add_argument("--threads", type=int, help="intra-op threads, Python and C++ (default: torch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the Python formats run")
    parser.add_argument("--no-cpp", action="store_true", help="leave the C++ consumer out")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.passes < 1:
        parser.error("--calls and --passes must be at least 1")
    if args.export_dir is not None and not (args.export_dir / FORMATS["torchscript"]).is_file():
        parser.error(f"{args.export_dir} has no {FORMATS['torchscript']}: give a run's outputs/exports/<run id>")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="digitflow-bench-inference-") as tmp:
        folder = Path(tmp)
        idx, pixels = test_images(args.data_dir, folder)
        batch = pixels[torch.arange(BATCH) % len(pixels)].contiguous()  # the consumer's batch: the first 256
        model = eager_model(args.export_dir)
        files = exported_files(model, args.export_dir, folder, pixels[:1])
        if args.device == "cuda":
            runners = cuda_runners(model, files, pixels[:1], folder)
            batch = batch.cuda()
        else:
            runners = {"eager": model, **{name: load_export(path) for name, path in files.items()}}
        rows = {
            (name, "Python"): time_python(run, batch[:1], batch, args.calls, args.passes)
            for name, run in runners.items()
        }
        if not args.no_cpp:
            try:
                program = build_cpp.build()
            except build_cpp.BuildError as exc:
                print(f"C++ consumer left out: {exc}", file=sys.stderr)
            else:
                for name in ("torchscript", "aoti"):
                    if name in files:
                        rows[name, "C++"] = time_cpp(program, files[name], idx, args.calls, args.passes, args.threads)
    print_table(rows, args, idx)
    return 0


def print_table(rows: dict[tuple[str, str], Timing], args: argparse.Namespace, idx: Path) -> None:
    device = torch.cuda.get_device_name() if args.device == "cuda" else (_cpu_name() or "CPU")
    print(f"{device}; Python {torch.get_num_threads()} thread(s); torch {torch.__version__}; images {idx.name}")
    print(f"latency: {args.calls} calls of one image; throughput: median of {args.passes} passes of {BATCH}")
    print()
    print("| format | runtime | batch 1 median (ms) | batch 1 p99 (ms) | batch 256 (images/s) |")
    print("|---|---|---|---|---|")
    for (name, runtime), t in rows.items():
        place = runtime if runtime == "C++" or args.device == "cpu" else f"{runtime} (CUDA)"
        print(f"| {LABELS[name]} | {place} | {t.median_ms:.3f} | {t.p99_ms:.3f} | {t.images_per_s:,.0f} |")
    ratios = [
        f"{runtime} {rows['aoti', runtime].median_ms / rows['torchscript', runtime].median_ms:.2f}"
        for runtime in ("Python", "C++")
        if ("aoti", runtime) in rows and ("torchscript", runtime) in rows
    ]
    if ratios:
        print(f"\nAOTInductor / TorchScript, batch 1 median: {', '.join(ratios)}")


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
