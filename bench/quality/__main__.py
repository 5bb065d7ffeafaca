"""`python -m bench.quality`: what a default training job gets right, against a plain peft script, in one run.

A task of our own (bench/quality/task.py: dates to ISO 8601, test dates from years never seen in
training). Our side runs as a user would: trainer-svc and serving-svc on their defaults, one job
submitted with nothing but the data, then the test prompts sent to serving as plain prompts and
as chat messages, to the base model and to the adapter, greedy; and the knowledge questions
(trainer_svc/worker/knowledge_probe.py) to both. The baseline (bench/quality/plain_script.py)
trains the same model on the same data for a fixed 150 steps, with the LoRA settings of peft's and TRL's examples.
Both sides' answers are scored by loraplane.answers, as the job's own task metrics are. Systems run
one after the other. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.machine import emit, machine, run_date
from bench.quality import tasks
from bench.quality.task import Example, make_task, write_jsonl
from bench.quality.tasks import TASKS
from bench.services import running_services
from bench.serving.workspace import prepare_model
from loraplane import answers
from loraplane.client import LoraplaneClient
from loraplane.training import JobState
from loraplane.types import Job, SamplingParameters, TrainingParameters
from trainer_svc.worker.knowledge_probe import QUESTIONS, _names_an_answer

log = logging.getLogger("bench.quality")
GREEDY = SamplingParameters(max_tokens=32, temperature=0)


def _ask(client: LoraplaneClient, adapter: str, prompts: list[str], *, chat: bool) -> list[str]:
    def one(prompt: str) -> str:
        if chat:
            answer = client.inference.generate(
                messages=[{"role": "user", "content": prompt}], adapter=adapter, params=GREEDY
            )
        else:
            answer = client.inference.generate(prompt=prompt, adapter=adapter, params=GREEDY)
        return answer.text.strip()

    with ThreadPoolExecutor(8) as pool:  # concurrent, as apps call it; greedy answers do not depend on batching
        return list(pool.map(one, prompts))


def _facts(answers: list[str]) -> list[bool]:
    return [_names_an_answer(a, accepted) for a, (_, accepted) in zip(answers, QUESTIONS, strict=True)]


def _train(client: LoraplaneClient, adapter: str, train_file: Path, replay_fraction: float | None) -> tuple[Job, float]:
    """Submit the job with nothing but the data, follow it to its end; the finished job and its seconds
    from submission."""
    training = TrainingParameters(replay_fraction=replay_fraction)
    job = client.jobs.create(adapter_name=adapter, training_file=train_file, training=training)
    started = time.perf_counter()
    for event in client.jobs.watch(job.id):
        log.info("job: %s", event.message)
    elapsed = time.perf_counter() - started
    job = client.jobs.retrieve(job.id)
    if job.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"the job ended {job.state}: {job.error}")
    return job, elapsed


def _answers_scored(client: LoraplaneClient, adapter_name: str, test: list[Example]) -> dict[str, Any]:
    """The adapter's and the base model's test answers, by plain prompt and by chat, scored by every
    comparison of loraplane.answers that applies (keys `[base_]{metric}_{prompt|chat}`: the strict and
    normalised exact match, and the JSON ones when the task's answers are JSON); the facts the base
    model knew and the adapter lost."""
    prompts, references = [e.prompt for e in test], [e.answer for e in test]
    scored: dict[str, Any] = {}
    for side, adapter in (("", adapter_name), ("base_", "")):
        for route, chat in (("prompt", False), ("chat", True)):
            replies = _ask(client, adapter, prompts, chat=chat)
            scored |= {f"{side}{metric}_{route}": v for metric, v in answers.scores(replies, references).items()}
    questions = [question for question, _ in QUESTIONS]
    base_known = _facts(_ask(client, "", questions, chat=True))
    adapter_known = _facts(_ask(client, adapter_name, questions, chat=True))
    return {
        **scored,
        "facts_known_by_base": sum(base_known),
        "facts_lost": sum(k and not a for k, a in zip(base_known, adapter_known, strict=True)),
    }


def _job_reported(job: Job) -> dict[str, Any]:
    """What the job itself says about its adapter: task scores, probe facts, generalization gaps."""
    metrics = job.metrics
    return {
        "task_scores": [
            {
                "held_out": s.held_out,
                "metric": s.metric,
                "examples": s.examples,
                "base": round(s.base, 3),
                "adapter": round(s.adapter, 3),
            }
            for s in job.metrics.task_scores
        ],
        "held_out_near_copy_share": metrics.held_out_near_copy_share,
        "probe_facts_known": metrics.probe_facts_known,
        "probe_facts_lost": metrics.probe_facts_lost,
        "final_generalization_gap": round(metrics.final_generalization_gap, 4),
        "best_generalization_gap": round(metrics.best_generalization_gap, 4),
    }


def run_ours(
    model_dir: Path, adapter: str, train_file: Path, test: list[Example], scratch: Path, replay_fraction: float | None
) -> dict[str, Any]:
    """One job with nothing but the data (and `replay_fraction` when given), then its answers through serving."""
    with running_services(model_dir, scratch) as client:
        job, elapsed = _train(client, adapter, train_file, replay_fraction)
        metrics = job.metrics
        return {
            "job_s": round(elapsed, 1),
            "steps": metrics.steps,
            "replay_examples": metrics.replay_examples,
            "best_step": metrics.best_step,
            "stopped_early": metrics.stopped_early,
            **_answers_scored(client, adapter, test),
            "job_reported": _job_reported(job),
        }


def run_plain(model_dir: Path, train_file: Path, test_file: Path, scratch: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.quality.plain_script", str(model_dir), str(train_file), str(test_file)]
    done = subprocess.run(
        [*command, str(scratch / "plain")], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument(
        "--task", default="dates", choices=["dates", *TASKS], help="dates: task.py; the others: tasks.py"
    )
    parser.add_argument("--train", type=int, default=400, help="training examples (the trainer holds 10%% out)")
    parser.add_argument("--test", type=int, default=40, help="test prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default="ours,plain", help="ours,plain")
    parser.add_argument(
        "--replay-fraction", type=float, default=None, help="our job's replay_fraction; default: the trainer's"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("~/.cache/loraplane-bench").expanduser())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    model_dir = prepare_model("smollm2", args.work_dir)
    if args.task == "dates":
        train, test = make_task(args.seed, args.train, args.test)
    else:
        train, test = tasks.make(args.task, args.seed, args.train, args.test)
    report: dict[str, Any] = {
        "date": run_date(),
        "machine": machine(),
        "model": "smollm2",
        "task": "dates to ISO 8601" if args.task == "dates" else TASKS[args.task].description,
        "train": args.train,
        "test": args.test,
        "seed": args.seed,
        "replay_fraction": args.replay_fraction,
    }
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        scratch = Path(tmp)
        train_file, test_file = write_jsonl(scratch / "train.jsonl", train), write_jsonl(scratch / "test.jsonl", test)
        for system in args.systems.split(","):
            log.info("running %s", system)
            if system == "ours":
                adapter = args.task.replace("-", "")
                report["ours"] = run_ours(model_dir, adapter, train_file, test, scratch, args.replay_fraction)
            else:
                report["plain"] = run_plain(model_dir, train_file, test_file, scratch)
    emit(report, args.out)


if __name__ == "__main__":
    main()
