"""`python -m bench.drift.prompt_lengths`: how often `prompt_length_psi` reads over on unchanged traffic, from
prompt lengths alone, and what a reference built from deduplicated data does to it.

Prompt lengths need no model, only the base model's tokenizer, so windows can be many and independent:
bench.drift.calibration draws its windows from one recorded set of prompts, which large windows share.
For a bench/quality task, the reference is the prompts of `--train` generated training examples, either as
the trainer keeps them (repeated examples removed, trainer_svc.dataset.deduplicate) or with every repeat;
windows are `--window` new in-distribution prompts each, `--windows` of them, or drawn from one recorded
set of `--recorded` prompts per seed as the calibration draws them. Each window is judged by
loraplane.drift_statistics at the per-statistic share of serving's default false-alarm rate. A prompt's
length is its content's tokens, as the trainer and serving record it. Prints JSON.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bench.machine import emit, machine, run_date
from bench.quality import tasks
from bench.serving.workspace import prepare_model
from loraplane.drift import LENGTH_BUCKET_EDGES, LENGTH_BUCKETS, DriftStatistic, length_bucket
from loraplane.drift_statistics import DEFINITIONS, bootstrap_p_value
from serving_svc.settings import ServingSettings

STATISTIC = DriftStatistic.PROMPT_LENGTH_PSI
THRESHOLD = ServingSettings.model_fields["drift_false_alarm_rate"].default / len(DriftStatistic)
"""A statistic's p-value threshold: the false-alarm rate shared among the statistics (Bonferroni)."""


def _lengths(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[int]:
    return [len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt in prompts]


def _features(lengths: list[int]) -> np.ndarray:
    rows = np.zeros((len(lengths), LENGTH_BUCKETS))
    rows[np.arange(len(lengths)), length_bucket(lengths)] = 1.0
    return rows


def _over(reference: np.ndarray, window: np.ndarray) -> bool:
    value = float(DEFINITIONS[STATISTIC].value(reference.sum(axis=0)[None], window.sum(axis=0)[None])[0])
    return bootstrap_p_value(STATISTIC, reference, window, value) < THRESHOLD


def _bucket_shares(lengths: list[int]) -> dict[str, float]:
    """Share of the lengths in each non-empty bucket, named by its lower edge."""
    buckets = length_bucket(lengths)
    lower = [0, *LENGTH_BUCKET_EDGES]
    return {f">={lower[b]}": float(np.mean(buckets == b)) for b in sorted(set(buckets.tolist()))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(tasks.TASKS), default="intent")
    parser.add_argument("--train", type=int, default=200, help="training examples the reference comes from")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--windows", type=int, default=400, help="windows of new prompts")
    parser.add_argument("--recorded", type=int, default=120, help="prompts per recorded set")
    parser.add_argument("--recorded-sets", type=int, default=6, help="recorded sets, 40 windows from each")
    parser.add_argument("--seed", type=int, default=0, help="the training examples' seed, as the calibration's")
    parser.add_argument("--work-dir", type=Path, default=Path("~/.cache/loraplane-bench"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(prepare_model("smollm2", args.work_dir.expanduser()))

    train, _ = tasks.make(args.task, args.seed, args.train, 0)
    sent = [example.prompt for example in train]
    kept = list(dict.fromkeys(sent))  # the examples are prompt and answer; a task's prompt decides its answer
    references = {"deduplicated": _lengths(tokenizer, kept), "as_sent": _lengths(tokenizer, sent)}
    traffic_seeds = range(args.seed + 1000, args.seed + 1000 + args.windows)
    fresh = [_lengths(tokenizer, tasks.traffic(args.task, s, args.window)["in_distribution"]) for s in traffic_seeds]
    population = [length for window in fresh for length in window]

    recorded: dict[str, float] = {}
    reference = _features(references["deduplicated"])
    for seed in range(args.seed + 1, args.seed + 1 + args.recorded_sets):  # the calibration records seed + 1
        lengths = _lengths(tokenizer, tasks.traffic(args.task, seed, args.recorded)["in_distribution"])
        rng = random.Random(0)
        draws = [_features(rng.sample(lengths, args.window)) for _ in range(40)]
        recorded[f"seed {seed}"] = float(np.mean([_over(reference, window) for window in draws]))

    document: dict[str, Any] = {
        "date": run_date(),
        "machine": machine(),
        "task": args.task,
        "statistic": STATISTIC.value,
        "threshold": THRESHOLD,
        "window": args.window,
        "reference_prompts": {name: len(lengths) for name, lengths in references.items()},
        "bucket_shares": {
            "traffic": _bucket_shares(population),
            **{f"reference_{name}": _bucket_shares(lengths) for name, lengths in references.items()},
        },
        "over_in_new_windows": {
            name: float(np.mean([_over(_features(lengths), _features(window)) for window in fresh]))
            for name, lengths in references.items()
        },
        "over_in_windows_of_one_recorded_set": recorded,
    }
    emit(document, args.out)


if __name__ == "__main__":
    main()
