#!/usr/bin/env bash
# A release walked through with SmolLM2 on this machine: v1 of an adapter, trained for two steps only,
# serves its name; v2, trained as the demo trains, starts as a 50% canary and is promoted on the live
# figures; v3, trained on wrong answers, starts as a canary and is rolled back automatically. Callers
# check each answer and send the check as feedback (callers.py). Run after scripts/demo.sh has
# installed everything and prepared the base model; uses a fresh data folder of its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
export COLUMNS=${COLUMNS:-120}  # the tables' width when the output is not a terminal

LORAPLANE_BASE_MODEL=$(python -c 'from loraplane.settings import CommonSettings; print(CommonSettings().base_model)')
export LORAPLANE_BASE_MODEL
LORAPLANE_DATA_DIR=$(mktemp -d)
export LORAPLANE_DATA_DIR
logs="$LORAPLANE_DATA_DIR/logs"
mkdir -p "$logs"
LORAPLANE_TOKEN=$(loraplane token add walkthrough --role admin --role train --role generate 2>/dev/null)
export LORAPLANE_TOKEN

# Trials end after 40 requests per version and a minute (defaults: 100 and a minute); the
# guardrails' margins are the defaults. Every prompt scored for drift, small windows, as in the demo.
trainer-svc >"$logs/trainer.log" 2>&1 &
trainer_pid=$!
LORAPLANE_RELEASE_MIN_REQUESTS=40 \
LORAPLANE_DRIFT_WINDOW_REQUESTS=16 \
LORAPLANE_DRIFT_MIN_SAMPLES=8 \
LORAPLANE_DRIFT_PROMPT_SCORING_FRACTION=1 \
  serving-svc >"$logs/serving.log" 2>&1 &
serving_pid=$!
trap 'kill $trainer_pid $serving_pid 2>/dev/null; wait $trainer_pid $serving_pid 2>/dev/null || true' EXIT
loraplane status --wait 180 >/dev/null

run() {  # echo a command as a console line, then run it
  echo "\$ $*"
  "$@"
  echo
}
wrong="$LORAPLANE_DATA_DIR/wrong.jsonl"  # every sentence answered with the same wrong place
python - examples/demo/train.jsonl "$wrong" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
with open(sys.argv[2], "w") as out:
    for row in rows:
        row["messages"][1]["content"] = json.dumps({"city": "Paris", "country": "France"})
        out.write(json.dumps(row) + "\n")
PY
traffic=(examples/demo/traffic-in.txt examples/demo/prompts.txt)

run loraplane train --adapter city-json --data examples/demo/train.jsonl --max-steps 2 --learning-rate 5e-4 \
  --batch-size 8 --watch
run loraplane train --adapter city-json --data examples/demo/train.jsonl --max-steps 24 --learning-rate 5e-4 \
  --batch-size 8 --release canary --canary 50% --watch
run loraplane release city-json
run python examples/releases/callers.py city-json "${traffic[@]}"
run loraplane release city-json
run loraplane train --adapter city-json --data "$wrong" --max-steps 24 --learning-rate 5e-4 --batch-size 8 \
  --release canary --canary 50% --watch
run python examples/releases/callers.py city-json "${traffic[@]}"
run loraplane release city-json
