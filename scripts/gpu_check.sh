#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (README: Tests and benchmark). Not run yet:
# no GPU machine was lent to the session that wrote it.
# Usage: scripts/gpu_check.sh DATA_DIR   (DATA_DIR holds MNIST/raw/t10k-*.gz and USPS/usps.t.bz2)
# Uses the machine's own python3 with torch and torchvision; only src/ is needed (no Prefect/MLflow).
set -uo pipefail
data_dir=${1:?usage: scripts/gpu_check.sh DATA_DIR}
export PYTHONPATH=src:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "== gpu tests"
python3 -m pytest tests/unit/test_gpu.py tests/unit/test_augment.py -q -p no:cacheprovider -o addopts="" 2>&1 | tail -3
echo "== benchmark (one epoch, seed loop vs engine) + time to 0.99 held-out accuracy"
python3 scripts/bench.py --data-dir "$data_dir" --cache-dir /tmp/digitflow-cache --to-accuracy 0.99
