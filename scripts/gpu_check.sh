#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (docs/training.md: "Training on a GPU").
# Usage: scripts/gpu_check.sh DATA_DIR [STAGE ...]
#   DATA_DIR holds MNIST/raw/t10k-*.gz and USPS/usps.t.bz2 (and FashionMNIST/raw/*.gz for --fashion-mnist).
#   STAGES (default: tests bench): tests, explore (scripts/gpu_explore.py: the measurements behind the
#   CUDA defaults), bench (scripts/bench.py at the GPU defaults: throughput, Fashion-MNIST epochs/s,
#   time to 0.99), run (a full `digitflow run`; needs Prefect and MLflow: wheels in .whl/, see the
#   docs/development.md).
# Uses the machine's own python3 with torch and torchvision. Each stage has its own time limit, so one
# that hangs cannot take the others with it. Logs go to $OUT (if set) as well as stdout.
set -uo pipefail
data_dir=${1:?usage: scripts/gpu_check.sh DATA_DIR [tests|explore|bench|run ...]}
shift
stages=${*:-tests bench}
export PYTHONPATH=src:. PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
fashion=()
[ -d "$data_dir/FashionMNIST/raw" ] && fashion=(--fashion-mnist)

for stage in $stages; do
  echo "== $stage"
  start=$(date +%s%N)
  case $stage in
    tests)
      timeout 120 python3 -m pytest tests/unit/test_gpu.py tests/unit/test_augment.py \
        -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/tests.log" | tail -25 ;;
    explore)
      timeout 200 python3 scripts/gpu_explore.py --data-dir "$data_dir" --seeds 3 2>&1 | tee "$out/explore.log" ;;
    bench)
      timeout 150 python3 scripts/bench.py --data-dir "$data_dir" --cache-dir /tmp/digitflow-cache \
        --to-accuracy 0.99 --accuracy-seeds 5 "${fashion[@]}" 2>&1 | tee "$out/bench.log" ;;
    run)
      if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
          && export PYTHONPATH=src:.:/tmp/site
      fi
      export PREFECT_HOME=/tmp/prefect-home PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
      export MLFLOW_TRACKING_URI=sqlite:////tmp/mlflow-gpu/mlflow.db
      run_start=$(date +%s%N)
      DIGITFLOW_DATA_DIR="$data_dir" timeout 240 python3 -m flows run --train 'mnist:test[:8000]' --test 'mnist:test[8000:]' \
        --offline --output-dir /tmp/digitflow-out 2>&1 | tee "$out/run.log" | tail -20
      echo "digitflow run wall time: $(( ($(date +%s%N) - run_start) / 1000000 )) ms" ;;
    *) echo "unknown stage $stage" ;;
  esac
  echo "-- $stage took $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
