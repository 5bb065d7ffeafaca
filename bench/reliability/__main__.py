"""Reliability benchmark: fuzzing, faults and sustained load, summarized as JSON.

    python -m bench.reliability [--model smollm2|tiny] [--streams 64] [--seconds 60] [--adapters 50]
                                [--slots 4] [--fuzz-scale 1] [--skip-suite] [--out FILE]

1. Fuzzing and faults are the test suite's own checks, run here under pytest and read back: the
   fuzz tests (random and adversarial requests to both live servers, over gRPC and HTTP) print how
   many cases each target got and how they were answered; the fault tests (kill -9 and SIGTERM of
   serving during streams, SIGTERM and kill -9 of the trainer mid-job, a full disk under the adapter
   cache, a locked and a read-only job store) pass or fail.
2. Load (`load.py`): `--streams` streams at once for `--seconds` against one serving replica as
   deployed, `--adapters` adapters over `--slots` engine slots, every answer compared with the one
   its adapter gives alone, the server's RSS sampled throughout.

JSON on stdout and in --out (default bench/results/reliability-<model>-cpu.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from bench.machine import machine, run_date
from bench.reliability.load import LoadPlan, run_load
from bench.serving.cli import DEFAULT_WORK_DIR
from bench.serving.workspace import prepare

log = logging.getLogger("bench.reliability")

ROOT = Path(__file__).resolve().parents[2]
FUZZ_TESTS = ["tests/integration/test_fuzz.py"]
FAULT_TESTS = [
    "tests/e2e/test_serving_faults.py",
    "tests/e2e/test_trainer_kill.py",
    "tests/unit/test_job_store.py::test_a_locked_database_is_unavailable_and_nothing_is_half_written",
    "tests/unit/test_job_store.py::test_a_read_only_database_is_unavailable",
]
_FUZZ_LINE = re.compile(r"^(?P<target>.+): (?P<cases>\d+) cases; (?P<statuses>.*)$")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--fuzz-scale", type=float, default=1.0, help="Multiplies the fuzz tests' case counts.")
    parser.add_argument("--skip-suite", action="store_true", help="Only the load; no fuzz or fault tests.")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def _statuses(text: str) -> dict[str, int]:
    pairs = (item.rsplit(": ", 1) for item in text.split(", ") if ": " in item)
    return {status: int(count) for status, count in pairs}


def run_suite(fuzz_scale: float) -> dict[str, Any]:
    """The fuzz and fault tests under pytest; what each reported and whether it passed."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
            "-o", "junit_logging=system-out", *FUZZ_TESTS, *FAULT_TESTS,
        ]  # fmt: skip
        env = {**os.environ, "FUZZ_EXAMPLES": str(fuzz_scale)}
        log.info("running the fuzz and fault tests: %s", " ".join(command[3:]))
        subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=sys.stderr)  # stdout carries the JSON
        cases = ElementTree.parse(report).getroot().iter("testcase")
        outcomes: dict[str, str] = {}
        fuzz: dict[str, Any] = {}
        for case in cases:
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            failed = case.find("failure") is not None or case.find("error") is not None
            outcomes[name] = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
            for line in (case.findtext("system-out") or "").splitlines():
                if match := _FUZZ_LINE.match(line.strip()):
                    statuses = _statuses(match["statuses"])
                    fuzz[match["target"]] = {"cases": int(match["cases"]), "statuses": statuses}
    faults = {name: outcome for name, outcome in outcomes.items() if not name.startswith("test_fuzz::")}
    fuzz_passed = all(outcome == "passed" for name, outcome in outcomes.items() if name.startswith("test_fuzz::"))
    return {
        "fuzz": {
            "cases": sum(target["cases"] for target in fuzz.values()),
            "targets": fuzz,
            "never_internal_and_healthy_after": fuzz_passed,
        },
        "faults": faults,
        "faults_survived": sum(outcome == "passed" for outcome in faults.values()),
        "faults_tried": len(faults),
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = _parse_args(argv)
    document: dict[str, Any] = {
        "benchmark": "reliability",
        "date": run_date(),
        "command": "python -m bench.reliability " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "model": args.model,
    }
    if not args.skip_suite:
        document.update(run_suite(args.fuzz_scale))
    workspace = prepare(args.model, args.work_dir, args.adapters, 0)
    plan = LoadPlan(streams=args.streams, seconds=args.seconds, slots=args.slots, max_tokens=args.max_tokens)
    document["load"] = run_load(workspace, plan, args.work_dir.expanduser())
    text = json.dumps(document, indent=2)
    out = args.out or ROOT / "bench" / "results" / f"reliability-{args.model}-cpu.json"
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
