#!/usr/bin/env bash
# Install what the tests need, then run every tier: unit (seconds, no model), integration
# (tiny model, real vLLM, real gRPC servers, real Ceph S3, real Prometheus) and e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
echo "== ruff, mypy, hadolint, docs"
ruff check loraplane trainer_svc serving_svc tests scripts bench
ruff format --check loraplane trainer_svc serving_svc tests scripts bench
mypy loraplane trainer_svc serving_svc bench
hadolint docker/*.Dockerfile
# The docs site, strictly: a broken link or anchor, a setting without a description or a results
# file no table can show fails here. (-q would hide the warnings that --strict counts.)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --clean -d build/site
echo "== pytest"
exec python -m pytest -q -p no:cacheprovider "$@"
