"""Training benchmark: our worker against a plain transformers + peft script, in one run.

    python -m bench.training [--model tiny|smollm2] [--steps N] [--repeats N] [--out FILE]

Both train the same LoRA (rank 16, alpha 32, every linear layer) on the same examples (the date
task of bench.quality), with the same batches, learning rate, seed, fixed number of steps and
validation evaluations. Our worker runs as the trainer runs it (`python -m trainer_svc.worker`,
early stopping off so the work is equal) and pays for what it adds while training: a resumable
checkpoint at every evaluation. What it does after training (evaluation by generation,
publishing) is not timed. Then our worker again with QLoRA, for its memory; and with --dpo, by
preference tuning on pairs of the same task (chosen: the ISO date; rejected: the date spelt
out), reporting also what its evaluation found on pairs from held-out years: how often the base
model and the adapter prefer the chosen answer, and the adapter's greedy exact match.

Measured per system, each in a process of its own, one at a time: training seconds (ours: from
its "training" phase event to its "evaluating" one; the script: `trainer.train()`), tokens
trained on per second, and peak RSS through training (ours: the kernel's high-water mark when
training ends; the script: the whole process's, which does nothing else). With --repeats, our
worker and the script alternate which goes first, and each figure is the median. JSON on
stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import machine, run_date
from bench.quality.task import make_task
from bench.serving.cli import DEFAULT_WORK_DIR
from bench.serving.workspace import prepare_model
from loraplane.training import Method
from trainer_svc.dataset import Example, PreferenceExample, PromptCompletion, SourcedExample, write_examples
from trainer_svc.progress import ErrorEvent, PhaseEvent, ResultEvent, parse_event
from trainer_svc.spec import DPO_LEARNING_RATE, DatasetSource, JobSpec, LoraParameters, TrainingParameters
from trainer_svc.worker_input import WorkerInput

log = logging.getLogger("bench.training")

RANK, ALPHA, DROPOUT = 16, 32.0, 0.05
LEARNING_RATE = 2e-4
BATCH_SIZE = 8
SEED = 0
VALIDATION_EXAMPLES = 16
MIB = 1024 * 1024


def _high_water_mark(pid: int) -> int:
    """Peak resident bytes of a running process so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


DPO_TEST_PAIRS = 40
DPO_FIGURES = (
    "preference_accuracy_base",
    "preference_accuracy_adapter",
    "preference_margin_base",
    "preference_margin_adapter",
    "task_exact_match_base",
    "task_exact_match_adapter",
    "probe_facts_lost",
)


def _write(folder: Path, name: str, examples: list[Example], first_line: int) -> None:
    write_examples(folder / name, [SourcedExample(line=first_line + i, example=e) for i, e in enumerate(examples)])


def _pair(prompt: str, answer: str) -> PreferenceExample:
    date = datetime.date.fromisoformat(answer)
    return PreferenceExample(prompt=prompt, chosen=answer, rejected=f"{date:%B} {date.day}, {date.year}")


def _write_data(folder: Path, train_count: int) -> None:
    """The examples for every system; and the same prompts as preference pairs, with pairs from held-out
    years for DPO's evaluation."""
    train, test = make_task(SEED, train_count + VALIDATION_EXAMPLES, DPO_TEST_PAIRS)
    rows = [PromptCompletion(prompt=e.prompt, completion=e.answer) for e in train]
    pairs = [_pair(e.prompt, e.answer) for e in train]
    for name, first, last in (("train.jsonl", 0, train_count), ("validation.jsonl", train_count, len(rows))):
        _write(folder, name, list(rows[first:last]), first + 1)
        _write(folder, f"pairs-{name}", list(pairs[first:last]), first + 1)
        plain = folder / f"plain-{name}"
        plain.write_text("".join(json.dumps(e.model_dump()) + "\n" for e in rows[first:last]))
    _write(folder, "pairs-test.jsonl", [_pair(e.prompt, e.answer) for e in test], 1)


def run_ours(model_dir: Path, method: Method, steps: int, eval_every: int, folder: Path) -> dict[str, Any]:
    """Our worker as the trainer starts it; timed and measured from its events."""
    spec = JobSpec(
        base_model="bench",
        adapter_name=f"bench-{method}",
        training_data=DatasetSource(inline_jsonl="{}"),
        method=method,
        lora=LoraParameters(rank=RANK, alpha=ALPHA, dropout=DROPOUT),
        training=TrainingParameters(
            max_steps=steps,
            batch_size=BATCH_SIZE,
            # DPO takes its own default rate, as a job that sets none does.
            learning_rate=DPO_LEARNING_RATE if method.learns_preferences else LEARNING_RATE,
            eval_every_steps=eval_every,
            early_stopping_patience=0,
            replay_fraction=0,  # the same examples as the script's
            seed=SEED,
        ),
    )
    work = Path(tempfile.mkdtemp(prefix=f"ours-{method}-", dir=folder))
    data = "pairs-" if method.learns_preferences else ""
    worker_input = WorkerInput(
        job_id=work.name,
        spec=spec,
        base_model_path=model_dir,
        train_file=folder / f"{data}train.jsonl",
        validation_file=folder / f"{data}validation.jsonl",
        test_file=folder / "pairs-test.jsonl" if method.learns_preferences else None,
        store_uri=(work / "store").as_uri(),
        work_dir=work / "work",
    )
    input_path = work / "input.json"
    input_path.write_text(worker_input.model_dump_json())
    command = [sys.executable, "-m", "trainer_svc.worker", str(input_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    began = ended = None
    peak = 0
    outcome: ResultEvent | ErrorEvent | None = None
    for line in process.stdout:
        event = parse_event(line)
        if isinstance(event, PhaseEvent) and event.phase == "training":
            began = time.perf_counter()
        elif isinstance(event, PhaseEvent) and event.phase == "evaluating" and ended is None:
            ended = time.perf_counter()
            peak = _high_water_mark(process.pid)
        elif isinstance(event, ResultEvent | ErrorEvent):
            outcome = event
    process.wait()
    if not isinstance(outcome, ResultEvent) or began is None or ended is None:
        return {"error": outcome.message if isinstance(outcome, ErrorEvent) else f"exit code {process.returncode}"}
    tokens = outcome.metrics["train_tokens"] * outcome.metrics["epochs"]
    if method.learns_preferences:  # each step trains on both answers of a pair; train_tokens counts the chosen
        tokens *= 2
    found = {name: round(outcome.metrics[name], 3) for name in DPO_FIGURES if name in outcome.metrics}
    return {**_figures(ended - began, tokens, peak), **(found if method.learns_preferences else {})}


def run_plain(model_dir: Path, steps: int, eval_every: int, folder: Path) -> dict[str, Any]:
    """The plain script in a process of its own; its peak RSS from the kernel once it has exited."""
    work = Path(tempfile.mkdtemp(prefix="plain-", dir=folder))
    config = {
        "model_dir": str(model_dir),
        "train_file": str(folder / "plain-train.jsonl"),
        "validation_file": str(folder / "plain-validation.jsonl"),
        "work_dir": str(work),
        "rank": RANK,
        "alpha": ALPHA,
        "dropout": DROPOUT,
        "learning_rate": LEARNING_RATE,
        "batch_size": BATCH_SIZE,
        "steps": steps,
        "eval_every": eval_every,
        "seed": SEED,
    }
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "bench.training.plain", str(config_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read() if process.stdout is not None else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        return {"error": f"exit code {process.returncode}"}
    result = json.loads(stdout.strip().splitlines()[-1])
    return _figures(result["train_s"], result["tokens"], usage.ru_maxrss * 1024)  # ru_maxrss is in KiB


FIGURES = ("train_s", "tokens", "tokens_per_s", "peak_rss_mib")


def _figures(train_s: float, tokens: float, peak_bytes: int) -> dict[str, Any]:
    return {
        "train_s": round(train_s, 2),
        "tokens": round(tokens),
        "tokens_per_s": round(tokens / train_s, 1),
        "peak_rss_mib": round(peak_bytes / MIB, 1),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs that worked, with every run beside it."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return {"error": runs[0]["error"], "runs": runs}
    keys = [key for key in good[0] if key in FIGURES or key in DPO_FIGURES]
    return {**{key: round(statistics.median(run[key] for run in good), 3) for key in keys}, "runs": runs}


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any], key: str) -> float | None:
    if key not in numerator or key not in denominator or not denominator[key]:
        return None
    return round(numerator[key] / denominator[key], 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    work_dir = args.work_dir.expanduser().resolve()
    model_dir = prepare_model(args.model, work_dir)
    folder = Path(tempfile.mkdtemp(prefix="training-", dir=work_dir))
    _write_data(folder, args.examples)
    eval_every = max(args.steps // 4, 1)
    runs: dict[str, list[dict[str, Any]]] = {"ours-lora": [], "plain-lora": []}
    for repeat in range(args.repeats):
        order = ["ours-lora", "plain-lora"] if repeat % 2 == 0 else ["plain-lora", "ours-lora"]
        for system in order:
            log.info("%s (run %d)", system, repeat + 1)
            if system == "ours-lora":
                runs[system].append(run_ours(model_dir, Method.LORA, args.steps, eval_every, folder))
            else:
                runs[system].append(run_plain(model_dir, args.steps, eval_every, folder))
    log.info("ours-qlora")
    runs["ours-qlora"] = [run_ours(model_dir, Method.QLORA, args.steps, eval_every, folder)]
    if args.dpo:
        log.info("ours-dpo")
        runs["ours-dpo"] = [run_ours(model_dir, Method.DPO, args.steps, eval_every, folder)]
    systems = {name: _median(system_runs) for name, system_runs in runs.items()}
    ours, plain, qlora = systems["ours-lora"], systems["plain-lora"], systems["ours-qlora"]
    return {
        "model": args.model,
        "steps": args.steps,
        "batch_size": BATCH_SIZE,
        "train_examples": args.examples,
        "eval_every_steps": eval_every,
        "repeats": args.repeats,
        "date": run_date(),
        "machine": machine(),
        "systems": systems,
        "ratios": {
            "tokens_per_s_ours_vs_plain": _ratio(ours, plain, "tokens_per_s"),
            "peak_rss_ours_vs_plain": _ratio(ours, plain, "peak_rss_mib"),
            "peak_rss_qlora_vs_lora": _ratio(qlora, ours, "peak_rss_mib"),
            "peak_rss_dpo_vs_lora": _ratio(systems.get("ours-dpo", {}), ours, "peak_rss_mib"),
        },
        "duration_s": round(time.time() - started, 1),
    }


def markdown(document: dict[str, Any]) -> str:
    lines = [
        f"model {document['model']}, {document['steps']} steps of {document['batch_size']} examples",
        "",
        "| system | train s | tokens/s | peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in document["systems"].items():
        if "error" in figures:
            lines.append(f"| {name} | failed: {figures['error'][:60]} | | |")
        else:
            lines.append(f"| {name} | {figures['train_s']} | {figures['tokens_per_s']} | {figures['peak_rss_mib']} |")
    lines += ["", *(f"{key}: {value}" for key, value in document["ratios"].items())]
    dpo = document["systems"].get("ours-dpo", {})
    lines += [f"ours-dpo {name}: {dpo[name]}" for name in DPO_FIGURES if name in dpo]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps, the same for every system")
    parser.add_argument("--examples", type=int, default=200, help="training examples (the date task)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of our worker and of the script, alternating")
    parser.add_argument("--dpo", action="store_true", help="also one run of our worker by preference tuning (DPO)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache of models and scratch")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.steps, args.examples, args.repeats) < 1:
        parser.error("--steps, --examples and --repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    document = run(args)
    text = json.dumps(document, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(markdown(document), file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
