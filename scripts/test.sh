#!/usr/bin/env bash
# Install what the tests need, then run every tier: unit (seconds, no model), integration
# (tiny model, real vLLM, real gRPC servers, real Ceph S3, real Prometheus) and e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
echo "== ruff, mypy, hadolint"
ruff check loraplane trainer_svc serving_svc tests scripts bench
ruff format --check loraplane trainer_svc serving_svc tests scripts bench
mypy loraplane trainer_svc serving_svc bench
hadolint docker/*.Dockerfile
echo "== pytest"
exec python -m pytest -q -p no:cacheprovider "$@"
