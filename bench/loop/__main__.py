"""`python -m bench.loop`: the loop from drifted traffic back to a better adapter, end to end, measured.

SmolLM2-135M, both services as processes on their defaults (but for where they listen), a real Prometheus
with the shipped rules and a real Alertmanager sending the retraining alerts to the trainer's webhook. The
alerts' `for` durations are cut to `--alert-for` seconds (15 and 30 minutes as shipped), the only change.

1. v1 of `date-forms` (a date written out in English, to ISO 8601; bench/quality/tasks.py) is trained
   through the API on its training forms (task A), every setting default.
2. An admin turns capture on and retraining on alerts (canary share 0.5, training defaults).
3. Traffic moves to task A': the same dates written out in French ("le 3 mars 1955"), which v1 never saw.
   Each caller scores the answer (1 right, 0 wrong) and sends the right date with a wrong one (a
   correction).
4. The feedback (or drift) alert fires; Alertmanager calls the trainer; the retrain job continues v1 on the
   corrected captures and v1's own data; if it passes its gate it goes on trial as a canary, and the
   replica promotes it or rolls it back on the same kind of traffic.

Prints JSON: v1's and v2's exact match on held-out A' and A prompts (through serving, pinned versions, sent
after the loop so they neither start it nor blur its drift windows), facts lost, drift statistics over on
A' traffic before (v1's window when the retrain job starts) and after promotion (v2's, absent without
one), the times from the first A' request to the alert, to the retrain job, to the candidate and to the
promotion, and what the loop cost (the retrain job's duration, captures stored, requests sent).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.machine import emit, machine, run_date
from bench.quality import tasks
from bench.quality.task import Example, write_jsonl
from bench.services import running_services
from bench.serving.ours import free_port
from bench.serving.workspace import prepare_model
from loraplane.answers import score
from loraplane.client import LoraplaneClient
from loraplane.training import JobState
from loraplane.types import Job, SamplingParameters
from tests.support.alertmanager import running_alertmanager
from tests.support.prometheus import Prometheus, running_prometheus
from tests.support.rules import rule_files, with_short_durations

log = logging.getLogger("bench.loop")
ADAPTER = "dateforms"
TASK = "date-forms"
GREEDY = SamplingParameters(max_tokens=16, temperature=0.0)
CALLERS = 4
"""Requests in flight at once, as callers send them."""
RETRAIN_ALERTS = ("LoraplaneFeedbackScoreLow", "LoraplaneAdapterDrift")


def _exact_match(client: LoraplaneClient, adapter: str, examples: list[Example]) -> float:
    """Normalised exact match of `adapter`'s greedy answers (case, spaces and surrounding punctuation aside)."""
    with ThreadPoolExecutor(CALLERS) as pool:
        answers = list(
            pool.map(lambda e: client.inference.generate(e.prompt, adapter=adapter, params=GREEDY).text, examples)
        )
    return round(score("normalized_exact_match", answers, [example.answer for example in examples]), 4)


def _callers(client: LoraplaneClient, examples: list[Example], first_user: int) -> float:
    """A' traffic as callers send it: each its own user, scoring the answer and correcting a wrong one; the
    share answered right."""

    def ask(numbered: tuple[int, Example]) -> bool:
        index, example = numbered
        reply = client.inference.generate(example.prompt, adapter=ADAPTER, params=GREEDY, user=f"u{first_user + index}")
        right = score("normalized_exact_match", [reply.text], [example.answer]) == 1.0
        client.inference.record_feedback(reply.request_id, float(right), correction=None if right else example.answer)
        return right

    with ThreadPoolExecutor(CALLERS) as pool:
        right = list(pool.map(ask, enumerate(examples)))
    return sum(right) / len(right)


class _Traffic:
    """A' callers, `batch` requests at a time, taking the next prompts of `examples` round and round."""

    def __init__(self, client: LoraplaneClient, examples: list[Example], batch: int) -> None:
        self._client, self._examples, self._batch = client, examples, batch
        self.sent = 0

    def send(self) -> float:
        """Send one batch; the share answered right."""
        batch = [self._examples[(self.sent + i) % len(self._examples)] for i in range(self._batch)]
        share = _callers(self._client, batch, self.sent)
        self.sent += len(batch)
        return round(share, 4)


def _within(deadline: float, what: str) -> None:
    if time.time() > deadline:
        raise RuntimeError(f"{what} within --timeout")


def _drift_over(client: LoraplaneClient, version: int) -> dict[str, Any]:
    """The drift statistics over for `version`'s live window, and the window's size."""
    entry = next(stats for stats in client.inference.adapter_stats(ADAPTER) if stats.version == version)
    return {
        "window_requests": entry.live.sample_count,
        "over": sorted(value.statistic for value in entry.statistics if value.over),
    }


def _first_alert(prometheus: Prometheus) -> dict[str, Any] | None:
    firing = [
        alert
        for alert in prometheus.alerts()
        if alert["labels"].get("alertname") in RETRAIN_ALERTS
        and alert["labels"].get("adapter") == ADAPTER
        and alert["state"] == "firing"
    ]
    return min(firing, key=lambda alert: alert["activeAt"]) if firing else None


def _retrain_job(client: LoraplaneClient) -> Job | None:
    return next((job for job in client.jobs.list(adapter_name=ADAPTER) if job.spec.parent), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loop", description=__doc__)
    parser.add_argument("--train", type=int, default=200, help="v1's training examples (task A)")
    parser.add_argument("--held-out", type=int, default=100, help="held-out prompts of A and of A' scored")
    parser.add_argument("--batch", type=int, default=64, help="A' requests sent between looks at the loop")
    parser.add_argument("--alert-for", type=int, default=30, help="seconds an alert's condition must hold")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the loop may take, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("~/.cache/loraplane-bench").expanduser())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    model_dir = prepare_model("smollm2", args.work_dir)
    train, _ = tasks.make(TASK, args.seed, args.train, 0)
    held_a, _ = tasks.make(TASK, args.seed + 1, args.held_out, 0)
    held_a_prime = tasks.french(TASK, args.seed + 1, args.held_out)
    traffic = tasks.french(TASK, args.seed + 2, 2000)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        scratch = Path(tmp)
        ports = {"trainer": free_port(), "serving": free_port(), "webhook": free_port()}
        settings = {
            "LORAPLANE_TRAINER_METRICS_PORT": str(ports["trainer"]),
            "LORAPLANE_SERVING_METRICS_PORT": str(ports["serving"]),
            "LORAPLANE_TRAINER_HTTP_PORT": str(ports["webhook"]),
        }
        rules = [with_short_durations(path, scratch / "rules", seconds=args.alert_for) for path in rule_files()]
        webhook = f"http://127.0.0.1:{ports['webhook']}/v1/alerts"
        with (
            running_services(model_dir, scratch, settings) as client,
            running_alertmanager(webhook, "", scratch / "alertmanager") as alertmanager,
            running_prometheus(
                {"trainer": ports["trainer"], "serving": ports["serving"]},
                _folder(scratch / "prometheus"),
                rules,
                alertmanager,
            ) as prometheus,
        ):
            results = _run(client, prometheus, train, held_a, held_a_prime, traffic, args, scratch)
    results.update(date=run_date(), machine=machine(), model="smollm2", task=TASK, alert_for_seconds=args.alert_for)
    emit(results, args.out)


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(
    client: LoraplaneClient,
    prometheus: Prometheus,
    train: list[Example],
    held_a: list[Example],
    held_a_prime: list[Example],
    traffic: list[Example],
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    job = client.jobs.create(adapter_name=ADAPTER, training_file=write_jsonl(scratch / "train.jsonl", train))
    for event in client.jobs.watch(job.id):
        log.info("v1: %s", event.message)
    v1_job = client.jobs.retrieve(job.id)
    if v1_job.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"v1's job ended {v1_job.state}: {v1_job.error}")
    client.inference.update_capture_policy(ADAPTER, enabled=True)
    client.jobs.update_retrain_policy(ADAPTER, enabled=True, canary_share=0.5)
    started, deadline = time.time(), time.time() + args.timeout
    right: list[float] = []
    marks: dict[str, float] = {}
    calls = _Traffic(client, traffic, args.batch)
    drift_v1: dict[str, Any] | None = None
    alert_name = ""
    while (retrain := _retrain_job(client)) is None:  # A' traffic until an alert starts a retrain job
        _within(deadline, "no retrain job started")
        right.append(calls.send())
        drift_v1 = _drift_over(client, 1)  # v1's window: A' traffic only, the last reading before the retrain
        log.info("sent %d A' requests; share right per batch %s", calls.sent, right)
    marks["retrain_job"] = retrain.created_at.timestamp()
    alert = _first_alert(prometheus)
    if alert is not None:  # fired at the end of its `for`, counted from when its condition first held
        marks["alert"] = datetime.fromisoformat(alert["activeAt"]).timestamp() + args.alert_for
        alert_name = alert["labels"]["alertname"]
    for event in client.jobs.watch(retrain.id):
        log.info("retrain: %s", event.message)
    while (state := client.inference.release(ADAPTER).state) is not None and state.candidate is not None:
        _within(deadline, "the candidate was neither promoted nor rolled back")
        marks.setdefault("candidate", time.time())
        right.append(calls.send())  # the canary's evidence: the same kind of traffic, scored
        log.info("candidate on trial; share right per batch %s", right[-3:])
    retrain_job = client.jobs.retrieve(retrain.id)
    if retrain_job.state is not JobState.SUCCEEDED or retrain_job.adapter is None:
        raise RuntimeError(f"the retrain job ended {retrain_job.state}: {retrain_job.error}")
    version = retrain_job.adapter.version
    if state is not None and state.stable == version:
        marks["promoted"] = time.time()
    metrics = retrain_job.metrics
    drift_v2 = None
    if "promoted" in marks:  # v2 answers the name now: its window of A' traffic, before any scoring traffic
        calls.send()
        drift_v2 = _drift_over(client, version)
    # Scored last, pinned: these requests are not A' traffic and would blur the drift windows read above.
    before = {
        "a_prime": _exact_match(client, f"{ADAPTER}@v1", held_a_prime),
        "a": _exact_match(client, f"{ADAPTER}@v1", held_a),
    }
    after = {
        "a_prime": _exact_match(client, f"{ADAPTER}@v{version}", held_a_prime),
        "a": _exact_match(client, f"{ADAPTER}@v{version}", held_a),
    }
    return {
        "train": args.train,
        "held_out": args.held_out,
        "exact_match": {"v1": before, "v2": after},
        "gain_on_a_prime": round(after["a_prime"] - before["a_prime"], 4),
        "change_on_a": round(after["a"] - before["a"], 4),
        "facts_lost": {"v1": v1_job.metrics.probe_facts_lost, "v2": metrics.probe_facts_lost},
        "gate": {
            "passed": metrics.gate_passed,
            "parent_task": [metrics.gate_parent_task_parent, metrics.gate_parent_task_candidate],
            "new_traffic": [metrics.gate_new_traffic_parent, metrics.gate_new_traffic_candidate],
            "facts": [metrics.gate_facts_parent, metrics.gate_facts_candidate],
        },
        "data": {
            "captures_corrected": metrics.capture_corrected,
            "captures_rated_good": metrics.capture_rated_good,
            "captures_left_out": metrics.capture_left_out,
            "parent_examples": metrics.parent_examples,
        },
        "drift_on_a_prime": {"v1": drift_v1, "v2": drift_v2},
        "share_right_per_batch": right,
        "seconds_from_first_a_prime_request": {
            name: round(marks[name] - started, 1)
            for name in ("alert", "retrain_job", "candidate", "promoted")
            if name in marks
        },
        "alert": alert_name or None,
        "promoted": "promoted" in marks,
        "cost": {
            "retrain_job_seconds": round((retrain_job.finished_at - retrain_job.started_at).total_seconds(), 1)
            if retrain_job.finished_at and retrain_job.started_at
            else None,
            "v1_job_seconds": round((v1_job.finished_at - v1_job.started_at).total_seconds(), 1)
            if v1_job.finished_at and v1_job.started_at
            else None,
            "a_prime_requests_sent": calls.sent,
        },
    }


if __name__ == "__main__":
    main()
