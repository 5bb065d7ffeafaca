"""`python -m bench.drift.calibration`: whether drift's verdicts can be trusted. How often traffic like an
adapter's training data reads drifted, in windows of 16, 30 and 100 requests, and how often shifted traffic
is caught in windows of 30.

Three adapters are trained through the API (trainer-svc on its defaults, nothing but the data) on
bench/quality's held-out tasks: people (JSON), date-forms (a date shape) and intent (labels). Each adapter's
traffic is recorded as serving records its requests, by the trainer's code that an integration test checks
against serving's live records on the same prompts (trainer_svc.worker.reference.answered_records: greedy
answers, prompts embedded, prompt surprise kept for a random PROMPT_SCORING_FRACTION of them as serving's
default samples it), for:

- in-distribution traffic: new prompts of the adapter's own training templates and entities, enough of them
  (`--in-distribution-prompts`, default four windows of the largest size) that windows of every size are
  mostly new prompts rather than the same few redrawn, whose one sample would decide every window;
- four shifts: another adapter's prompts; the same task in other phrasings and entities (the task's test
  templates); the task's prompts in French; and its own prompts asking for a sentence instead of the
  trained form (the form shift).

Windows are drawn from those records (without replacement within a window, with it for a window larger
than the records), `--windows` per size and per shift, and judged against the adapter's published reference
by loraplane.drift_statistics with serving's default false-alarm rate. Prints JSON: per adapter, the share
of windows with any statistic over and with each statistic over, and the power per shift.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from bench.machine import emit, machine, run_date
from bench.quality import tasks
from bench.quality.task import write_jsonl
from bench.services import running_services
from bench.serving.workspace import prepare_model
from loraplane.drift import DriftStatistic, Profile, Record
from loraplane.drift_statistics import Calibration, Verdicts, report
from loraplane.training import JobState
from serving_svc.settings import ServingSettings
from trainer_svc.worker.reference import answered_records

log = logging.getLogger("bench.drift.calibration")
TASK_NAMES = ("people", "date-forms", "intent")
FALSE_ALARM_SIZES = (16, 30, 100)
POWER_SIZE = 30
MAX_TOKENS = 48
"""A caller's max_tokens: the answers of every kind of traffic are cut here."""
PROMPT_SCORING_FRACTION = ServingSettings.model_fields["drift_prompt_scoring_fraction"].default
FALSE_ALARM_RATE = ServingSettings.model_fields["drift_false_alarm_rate"].default


def _train(client: Any, scratch: Path, name: str, seed: int, examples: int) -> Path:
    """The adapter of task `name` trained through the API; the folder of its published version."""
    train, _ = tasks.make(name, seed, examples, 0)
    adapter = name.replace("-", "")
    job = client.jobs.create(adapter_name=adapter, training_file=write_jsonl(scratch / f"{adapter}.jsonl", train))
    for event in client.jobs.watch(job.id):
        log.info("%s: %s", adapter, event.message)
    finished = client.jobs.retrieve(job.id)
    if finished.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"the {name} job ended {finished.state}: {finished.error}")
    return scratch / "data" / "store" / "adapters" / adapter / f"v{finished.adapter.version}"


def _chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The prompt's tokens as serving renders a chat message for an adapter trained in chat format."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer.encode(str(text), add_special_tokens=False))


def _recorded(
    model: Any, tokenizer: PreTrainedTokenizerBase, prompts: list[str], form: Any, rng: random.Random
) -> list[Record]:
    """Records of `prompts` as serving makes them, prompt surprise kept for PROMPT_SCORING_FRACTION of them."""
    records = answered_records(
        model,
        tokenizer,
        [_chat_prompt(tokenizer, prompt) for prompt in prompts],
        form,
        max_new_tokens=MAX_TOKENS,
        generation_batch_size=16,
        score_batch_size=8,
    )
    unscored = {"nll": None, "scored_tokens": 0}
    return [
        r
        if rng.random() < PROMPT_SCORING_FRACTION
        else r.model_copy(update={"prompt": r.prompt.model_copy(update=unscored)})
        for r in records
    ]


def _windows(
    calibration: Calibration, records: list[Record], size: int, count: int, rng: random.Random
) -> dict[str, Any]:
    """`count` windows of `size` records drawn from `records`: the share read drifted, and per statistic over."""
    verdicts = Verdicts(FALSE_ALARM_RATE)
    drifted, over = 0, Counter[str]()
    for _ in range(count):  # with replacement past the records there are, as the bootstrap draws
        drawn = rng.sample(records, size) if size <= len(records) else rng.choices(records, k=size)
        window = Profile.of_window(drawn)
        result = report(calibration, window, verdicts, min_samples=1)
        drifted += result.drifted
        over.update(statistic.value for statistic, reading in result.readings.items() if reading.over)
    return {
        "windows": count,
        "size": size,
        "any_over": round(drifted / count, 4),
        "over": {statistic.value: round(over[statistic.value] / count, 4) for statistic in DriftStatistic},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drift.calibration", description=__doc__)
    parser.add_argument("--train", type=int, default=200, help="training examples per adapter")
    parser.add_argument("--prompts", type=int, default=120, help="prompts recorded per kind of shifted traffic")
    parser.add_argument(
        "--in-distribution-prompts",
        type=int,
        default=4 * max(FALSE_ALARM_SIZES),
        help="in-distribution prompts recorded per adapter",
    )
    parser.add_argument("--windows", type=int, default=200, help="windows drawn per size and per shift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("~/.cache/loraplane-bench").expanduser())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    model_dir = prepare_model("smollm2", args.work_dir)
    results: dict[str, Any] = {
        "date": run_date(),
        "machine": machine(),
        "model": "smollm2",
        "train": args.train,
        "prompts": args.prompts,
        "in_distribution_prompts": args.in_distribution_prompts,
        "false_alarm_rate": FALSE_ALARM_RATE,
        "prompt_scoring_fraction": PROMPT_SCORING_FRACTION,
        "adapters": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-drift-calibration-") as tmp:
        scratch = Path(tmp)
        started = time.perf_counter()
        with running_services(model_dir, scratch) as client:
            published = {name: _train(client, scratch, name, args.seed, args.train) for name in TASK_NAMES}
        results["training_s"] = round(time.perf_counter() - started, 1)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        traffic = {
            name: tasks.traffic(name, args.seed + 1, args.prompts, args.in_distribution_prompts) for name in TASK_NAMES
        }
        for index, name in enumerate(TASK_NAMES):
            rng = random.Random(args.seed)
            reference = Profile.load(published[name] / "profile.json")
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, published[name])
            other = TASK_NAMES[(index + 1) % len(TASK_NAMES)]
            kinds = {**traffic[name], "another_task": traffic[other]["in_distribution"][: args.prompts]}
            records = {
                kind: _recorded(model, tokenizer, prompts, reference.form, rng) for kind, prompts in kinds.items()
            }
            calibration = Calibration(reference)
            results["adapters"][name] = {
                "form": reference.form.describe() if reference.form else None,
                "reference": {"prompts": len(reference.prompts), "answers": reference.sample_count},
                "false_alarms": [
                    _windows(calibration, records["in_distribution"], size, args.windows, rng)
                    for size in FALSE_ALARM_SIZES
                ],
                "power": {
                    kind: _windows(calibration, records[kind], POWER_SIZE, args.windows, rng)
                    for kind in ("another_task", "other_phrasing", "french", "prose")
                },
            }
            log.info("%s: %s", name, json.dumps(results["adapters"][name]))
    emit(results, args.out)


if __name__ == "__main__":
    main()
