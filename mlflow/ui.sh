#!/usr/bin/env bash
# Serve the MLflow UI on the tracking store runs were written to: $MLFLOW_TRACKING_URI if set (as for
# `digitflow run`), else the one in the file $DIGITFLOW_CREDENTIALS names (digitflow reads it too), else the
# project's store (mlflow/mlflow.db, artifacts in mlflow/artifacts).
# Bound to 127.0.0.1: the store is yours, not the network's. MLFLOW_PORT changes the port (default 5000).
# A tracking server (http://, https://) serves its own UI: nothing to start here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${MLFLOW_PORT:-5000}"
if [[ -z "${MLFLOW_TRACKING_URI:-}" && -n "${DIGITFLOW_CREDENTIALS:-}" && -r "$DIGITFLOW_CREDENTIALS" ]]; then
  # the credentials file digitflow reads (a team setup's): its tracking URI, read as text, never sourced
  MLFLOW_TRACKING_URI="$(sed -n 's/^[[:space:]]*\(export[[:space:]]\{1,\}\)\{0,1\}MLFLOW_TRACKING_URI=//p' "$DIGITFLOW_CREDENTIALS" | tail -n 1 | tr -d "\"'")"
  [[ -n "$MLFLOW_TRACKING_URI" ]] || unset MLFLOW_TRACKING_URI
fi
uri="${MLFLOW_TRACKING_URI:-sqlite:///$here/mlflow.db}"
artifacts=()
shown="$(printf '%s' "$uri" | sed -E 's#^([a-z+]+://[^:/@]*):[^@/]*@#\1:***@#')"  # never a password as it is
case "$uri" in
  http://* | https://*)
    echo "mlflow/ui.sh: MLFLOW_TRACKING_URI is a tracking server ($shown): open it in a browser, it serves its own UI (a team setup asks for your user and password)" >&2
    exit 2 ;;
  sqlite:///*)
    db="${uri#sqlite:///}"  # sqlite:////abs/path -> /abs/path; sqlite:///rel/path -> rel/path (from here, the cwd)
    if [[ -n "${MLFLOW_TRACKING_URI:-}" && ! -f "$db" ]]; then
      echo "mlflow/ui.sh: no MLflow store at $db (MLFLOW_TRACKING_URI=$shown)" >&2
      exit 2
    fi
    mkdir -p "$(dirname "$db")"
    store="$(cd "$(dirname "$db")" && pwd)"
    uri="sqlite:///$store/$(basename "$db")"
    mkdir -p "$store/artifacts"  # digitflow keeps a SQLite store's artifacts beside the database
    artifacts=(--default-artifact-root "$store/artifacts") ;;
esac
echo "MLflow UI on $uri: http://127.0.0.1:$port/#/experiments?workflowType=machine_learning" >&2
exec mlflow ui \
  --backend-store-uri "$uri" \
  ${artifacts[@]+"${artifacts[@]}"} \
  --host 127.0.0.1 --port "$port"
