#!/usr/bin/env bash
# Serve the MLflow UI on the project's tracking store (mlflow/mlflow.db, artifacts in mlflow/artifacts).
# Bound to 127.0.0.1: the store is yours, not the network's. MLFLOW_PORT changes the port (default 5000).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/artifacts"
exec mlflow ui \
  --backend-store-uri "sqlite:///$here/mlflow.db" \
  --default-artifact-root "$here/artifacts" \
  --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}"
