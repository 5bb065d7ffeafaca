"""Benchmark tables rendered from the results files in bench/results/, never typed by hand.

Each `python -m bench.*` run writes one JSON document; the docs site's benchmarks page names
the files it shows (`<!-- bench: FILE -->`) and scripts/mkdocs_hooks.py puts each file's tables
there when the site is built. Every table is headed by the file, the machine and the date the
file records; where it records neither, the heading says so rather than guess. The renderer is
chosen by what a document holds, so a file whose shape no renderer knows fails the build.
`python scripts/gen_bench_docs.py FILE` prints one file's tables; `--held-out-tasks` prints the README's
table of the held-out quality tasks (a test holds the README to it).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loraplane.training import HeldOutSet

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
NOT_RECORDED = "not recorded in the file"

SYSTEM_NAMES = {
    "ours-transformers": "ours (transformers engine)",
    "ours-transformers-http": "ours over HTTP",
    "ours-vllm": "ours (vLLM engine)",
    "raw-vllm": "raw vLLM",
    "peft-mixed": "peft mixed batch",
    "peft-sequential": "peft one adapter at a time",
    "ours-lora": "our worker, LoRA",
    "plain-lora": "plain script, LoRA",
    "ours-qlora": "our worker, QLoRA",
    "ours-dpo": "our worker, DPO",
}


class UnknownResults(ValueError):
    """A results document no renderer knows: the page would show nothing for it."""


def _num(value: Any, places: int = 1) -> str:
    """A figure as the tables show it: ints with thousands separators, floats to `places`, None as -."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{places}f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(document: dict[str, Any]) -> str:
    """The machine a document records, in a line: cores, GPU, platform and library versions."""
    info = document.get("machine")
    if not info:
        return NOT_RECORDED
    gpu = info.get("gpu") or "no GPU"
    versions = ", ".join(f"{name} {version}" for name, version in (info.get("versions") or {}).items() if version)
    return (
        f"{info.get('cpu_count')} CPU cores ({info.get('cpus_usable')} usable), {gpu}, {info.get('platform')}, "
        f"Python {info.get('python')}" + (f"; {versions}" if versions else "")
    )


_RUN_FOLDER = re.compile(r"/runs/(\d{4})(\d{2})(\d{2})-\d{6}$")


def date(document: dict[str, Any]) -> str:
    """The date a document records: its `date`, else its run folder's timestamped name, else none."""
    if document.get("date"):
        return str(document["date"])[:10]
    if match := _RUN_FOLDER.search(str(document.get("logs") or "")):
        return "{}-{}-{} (from the run folder's name)".format(*match.groups())
    return NOT_RECORDED


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _system(name: str | None) -> str:
    return SYSTEM_NAMES.get(name or "", name or "-")


def _row_label(key: str) -> str:
    """A serving row's key ("32/zipf", "0/base") as its label in every table: 32 (zipf), 0 (base model)."""
    adapters, traffic = key.split("/")
    return "0 (base model)" if adapters == "0" else f"{adapters} ({traffic})"


def _row_key(row: dict[str, Any]) -> str:
    return f"{row['adapters']}/{row['traffic']}"


def _throughput(row: dict[str, Any] | None) -> str:
    """One system's tokens/s in one row, with each run's range beside it when the row was repeated."""
    if row is None:
        return "-"
    if row.get("error"):
        return "failed"
    runs = row.get("tokens_per_s_runs") or []
    spread = f" ({_num(min(runs))}-{_num(max(runs))})" if len(runs) > 1 else ""
    return _num(row["tokens_per_s"]) + spread


RATIO_COLUMNS = {
    "vs_best_baseline": "vs the best baseline",
    "vs_peft_sequential": "vs peft one adapter at a time",
    "vs_ours_base": "vs its own base-model row",
    "vs_ours_1_adapter": "vs its own 1-adapter row",
    "http_vs_grpc": "HTTP vs gRPC",
}
"""bench.serving's ratios (report.py), in the order the page shows them."""


def _throughput_table(document: dict[str, Any]) -> str:
    results = document["results"]
    systems = list(dict.fromkeys(row["system"] for row in results))
    cells = {(row["system"], _row_key(row)): row for row in results}
    keys = sorted({_row_key(row) for row in results}, key=lambda key: (int(key.split("/")[0]), key))
    return _table(
        ["adapters (traffic)", *map(_system, systems)],
        ([_row_label(key), *(_throughput(cells.get((system, key))) for system in systems)] for key in keys),
    )


def _ratio(entry: dict[str, Any], column: str) -> str:
    value = _num(entry.get(column), 2)
    return f"{value} ({_system(entry.get('best_baseline'))})" if column == "vs_best_baseline" else value


def _ratios_table(ratios: dict[str, dict[str, Any]]) -> str:
    shown = [column for column in RATIO_COLUMNS if any(entry.get(column) is not None for entry in ratios.values())]
    return _table(
        ["adapters (traffic)", *(RATIO_COLUMNS[column] for column in shown)],
        ([_row_label(key), *(_ratio(entry, column) for column in shown)] for key, entry in ratios.items()),
    )


def _cold_load_table(cold_load: dict[str, Any]) -> str:
    rows = []
    for system, entry in cold_load.items():
        shapes = {k: v for k, v in entry.items() if isinstance(v, dict)} or {"the benchmark's own": entry}
        for shape, figures in shapes.items():
            size = f"{figures['adapter_bytes'] / 1e6:.1f} MB" if "adapter_bytes" in figures else "-"
            warm, cold = figures.get("warm_ttft_median_s"), figures.get("cold_ttft_median_s")
            rows.append(
                [_system(system), shape, size, _num(entry.get("slots")), _num(warm, 3), _num(cold, 3)]
                + [_num(figures.get("cold_load_ms"), 0)]
            )
    header = ["system", "adapter targets", "size", "adapters resident", "warm TTFT s", "cold TTFT s", "added ms"]
    return _table(header, rows)


def serving(document: dict[str, Any]) -> str:
    """bench.serving: tokens/s per row and system, the ratios the targets are judged by, cold loads."""
    repeats = document.get("repeats", 1)
    parts = [
        f"{document['requests']} streamed chat requests per row, {document['concurrency']} at once, exactly "
        f"{document['max_tokens']} greedy tokens each; engine batch {document['batch_size']}; "
        f"{_plural(repeats, 'run')} of every row"
        + (" (tokens/s over all runs, the runs' range in brackets)" if repeats > 1 else "")
        + f"; {_num(document['duration_s'] / 60, 0)} minutes in all. Tokens/s:",
        _throughput_table(document),
    ]
    if ratios := document.get("ratios", {}).get("rows"):
        parts += [f"Ratios of the tokens/s of {_system(document['ratios']['ours'])}:", _ratios_table(ratios)]
    if cold_load := document.get("cold_load"):
        parts += [
            "Cold load: a just-published adapter's time to first token against a loaded one's, one request "
            "at a time, median of the runs:",
            _cold_load_table(cold_load),
        ]
    return "\n\n".join(parts)


TRAINING_RATIOS = {
    "tokens_per_s_ours_vs_plain": "tokens/s of our worker over the script's",
    "peak_rss_ours_vs_plain": "peak RSS of our worker over the script's",
    "peak_rss_qlora_vs_lora": "peak RSS of QLoRA over LoRA's",
    "peak_rss_dpo_vs_lora": "peak RSS of DPO over LoRA's",
}
COMPARISONS = {
    "exact_match": "exact match",
    "normalized_exact_match": "normalised exact match",
    "json_exact_match": "exact match as JSON",
    "field_accuracy": "JSON field accuracy",
}
"""loraplane.answers' comparisons, as the tables name them."""
TASK_METRICS = {**COMPARISONS, "rouge_l": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF"}


def _dpo_outcome(dpo: dict[str, Any]) -> str:
    rows = [
        ("held-out pairs whose chosen answer is the likelier", "preference_accuracy", 3),
        ("mean log-probability margin, chosen over rejected (nats)", "preference_margin", 2),
        ("greedy exact match on the held-out prompts", "task_exact_match", 3),
    ]
    return _table(
        ["", "base model", "DPO adapter"],
        ([label, _num(dpo[f"{key}_base"], places), _num(dpo[f"{key}_adapter"], places)] for label, key, places in rows),
    )


def training(document: dict[str, Any]) -> str:
    """bench.training: seconds, tokens/s and peak memory per system; with --dpo, what DPO learnt."""
    systems = document["systems"]
    ratios = "; ".join(
        f"{TRAINING_RATIOS.get(name, name)}: {_num(value, 3)}" for name, value in document["ratios"].items() if value
    )
    parts = [
        f"{document['steps']} steps of batch {document['batch_size']} on {document['train_examples']} examples, "
        f"validation every {document['eval_every_steps']} steps; the median of each system's runs:",
        _table(
            ["system", "runs", "training s", "tokens/s", "peak RSS MiB"],
            (
                [_system(name), _num(len(s.get("runs", [])) or None), _num(s["train_s"]), _num(s["tokens_per_s"])]
                + [_num(s["peak_rss_mib"], 0)]
                for name, s in systems.items()
            ),
        ),
        f"Ratios: {ratios}.",
    ]
    if dpo := systems.get("ours-dpo"):
        parts += [
            "What the DPO adapter learnt, on pairs from held-out years:",
            _dpo_outcome(dpo),
            f"General facts the adapter lost (of those its base knew): {_num(dpo['probe_facts_lost'], 0)}.",
        ]
    return "\n\n".join(parts)


def _headline(ours: dict[str, Any]) -> str:
    """The comparison a task is judged by: parsed JSON where its answers are JSON, else exact match."""
    return "json_exact_match" if "json_exact_match_chat" in ours else "exact_match"


def _quality_table(ours: dict[str, Any], plain: dict[str, Any]) -> str:
    metric = _headline(ours)
    header = ["", f"{COMPARISONS[metric]}, plain prompt", f"{COMPARISONS[metric]}, chat message"]
    header += [f"facts lost (of {ours['facts_known_by_base']} the base knew)", "steps", "time s"]
    return _table(
        header,
        [
            ["base model, through serving", _num(ours[f"base_{metric}_prompt"], 2)]
            + [_num(ours[f"base_{metric}_chat"], 2), "-", "-", "-"],
            ["our job, default settings, through serving", _num(ours[f"{metric}_prompt"], 2)]
            + [_num(ours[f"{metric}_chat"], 2), _num(ours["facts_lost"]), _num(ours["steps"])]
            + [_num(ours["job_s"]) + " (the whole job)"],
            ["plain script, its own `generate`", "-", _num(plain[f"{metric}_chat"], 2)]
            + [_num(plain["facts_lost"]), _num(plain["steps"]), _num(plain["train_s"]) + " (training alone)"],
        ],
    )


HELD_OUT_TASKS = ("people", "date-forms", "intent")
"""The bench.quality tasks whose test prompts share no phrasing or entity with training: the README's table."""


def _job_figure(scores: list[dict[str, Any]], metric: str) -> str:
    """The base model's and the adapter's scores the job reported for `metric`, on the unseen groups where
    it held some out (else the first set it measured), with that set's name."""
    measured = [s for s in scores if s["metric"] == metric]
    score = next((s for s in measured if s["held_out"] == HeldOutSet.UNSEEN_GROUPS), measured[0])
    return f"{_num(score['base'], 2)} → {_num(score['adapter'], 2)} on {HeldOutSet(score['held_out']).described}"


def held_out_tasks_summary() -> str:
    """One row per held-out task, chat messages through serving: what the README's Training section shows."""
    rows = []
    for task in HELD_OUT_TASKS:
        path = RESULTS / f"quality-{task}-smollm2-cpu.json"
        document = json.loads(path.read_text())
        ours, plain = document["ours"], document["plain"]
        metric = _headline(ours)
        reported = _job_figure(ours["job_reported"]["task_scores"], metric)
        rows.append(
            [f"`{task}` ({COMPARISONS[metric]})", _num(ours[f"base_{metric}_chat"], 2), _num(ours[f"{metric}_chat"], 2)]
            + [reported, _num(plain[f"{metric}_chat"], 2), f"{_num(ours['facts_lost'])} / {_num(plain['facts_lost'])}"]
            + [f"{_num(ours['job_s'], 0)} / {_num(plain['train_s'], 0)}", date(document)]
        )
    header = ["task", "base model", "our job, defaults", "what the job reported, base → adapter", "plain peft script"]
    header += ["facts lost, ours / plain", "time s, whole job / script's training", "run"]
    return _table(header, rows)


def _comparisons_table(ours: dict[str, Any], plain: dict[str, Any]) -> str:
    """Each comparison the results hold (the JSON ones only for a task whose answers are JSON), per system."""
    columns = [(ours, "base_{}_prompt"), (ours, "base_{}_chat"), (ours, "{}_prompt"), (ours, "{}_chat")]
    columns.append((plain, "{}_chat"))
    return _table(
        ["comparison", "base, plain prompt", "base, chat", "our job, plain prompt", "our job, chat", "plain script"],
        (
            [label] + [_num(system.get(key.format(name)), 2) for system, key in columns]
            for name, label in COMPARISONS.items()
            if f"{name}_chat" in ours
        ),
    )


def _job_scores_table(scores: list[dict[str, Any]]) -> str:
    return _table(
        ["held-out set", "metric", "prompts", "base model", "adapter"],
        (
            [HeldOutSet(s["held_out"]).described if s["held_out"] else "-", TASK_METRICS.get(s["metric"], s["metric"])]
            + [str(s["examples"]), _num(s["base"], 3), _num(s["adapter"], 3)]
            for s in scores
            if s["metric"] in COMPARISONS
        ),
    )


def quality(document: dict[str, Any]) -> str:
    """bench.quality: exact match through serving, facts lost and time, our job against the plain script."""
    ours = document["ours"]
    parts = [
        f"Task: {document['task']}; {document['train']} training and {document['test']} test examples, seed "
        f"{document['seed']}.",
        _quality_table(ours, document["plain"]),
    ]
    if "normalized_exact_match_chat" in ours:  # results scored by loraplane.answers, every comparison kept
        parts += ["The same answers by each comparison:", _comparisons_table(ours, document["plain"])]
    scores = ours.get("job_reported", {}).get("task_scores")
    if isinstance(scores, list):  # each score with the held-out set it was measured on
        parts += ["What the job itself reported, on the held-out sets it made:", _job_scores_table(scores)]
    elif scores:
        parts += [
            "What the job itself reported, on its validation prompts:",
            _table(
                ["metric", "base model", "adapter"],
                (
                    [TASK_METRICS.get(name.removeprefix("TASK_METRIC_").lower(), name), _num(base, 3)]
                    + [_num(adapter, 3)]
                    for name, (base, adapter) in scores.items()
                ),
            ),
        ]
    extras = {"best step": "best_step", "stopped early": "stopped_early", "replay examples": "replay_examples"}
    facts = [f"{label} {_num(ours[key])}" for label, key in extras.items() if ours.get(key) is not None]
    parts.append(f"Our job: {', '.join(facts)}.")
    return "\n\n".join(parts)


def drift(document: dict[str, Any]) -> str:
    """bench.drift: latency with drift monitoring off and on, alternated, and on / off."""
    load = document["load"]
    measures = {"p50_latency_s": "p50 latency s", "p99_latency_s": "p99 latency s"}
    measures |= {"p50_ttft_s": "p50 TTFT s", "p99_ttft_s": "p99 TTFT s"}
    sides = (("off", "drift_off"), ("on", "drift_on"), ("on / off", "on_over_off"))
    return "\n\n".join(
        [
            f"{document['adapters']} adapters with a reference profile, {load['max_tokens']} tokens per request, "
            f"{load['concurrency']} at once; monitoring off and on alternated "
            f"{_plural(document['rounds'], 'time')}:",
            _table(
                ["monitoring", "requests", *measures.values()],
                (
                    [label, _num(document[key].get("requests")), *(_num(document[key][m], 2) for m in measures)]
                    for label, key in sides
                ),
            ),
        ]
    )


def releases(document: dict[str, Any]) -> str:
    """bench.releases: callers' throughput and latency with no release, a canary and a shadow, and the ratios."""
    load = document["load"]
    measures = {"requests_per_s": "requests/s", "p50_latency_s": "p50 latency s", "p99_latency_s": "p99 latency s"}
    measures |= {"p50_ttft_s": "p50 TTFT s", "p99_ttft_s": "p99 TTFT s"}
    sides = (("none", "release_none"), (f"canary {document['canary_share']:.0%}", "release_canary"))
    sides += (
        ("shadow", "release_shadow"),
        ("canary / none", "canary_over_none"),
        ("shadow / none", "shadow_over_none"),
    )
    shadow = document["shadow_requests"]
    offered = sum(shadow.values())
    return "\n\n".join(
        [
            f"{document['adapters']} adapter names of two versions each, {load['max_tokens']} tokens per request, "
            f"{load['concurrency']} at once; the settings alternated {_plural(document['rounds'], 'time')}:",
            _table(
                ["release", *measures.values()],
                ([label, *(_num(document[key].get(m), 3) for m in measures)] for label, key in sides),
            ),
            *_per_round_spread(document),
            f"Shadow requests offered: {_num(offered)}; "
            + ", ".join(f"{outcome} {_num(count)}" for outcome, count in shadow.items())
            + " (busy: shed while real requests waited or the shadow places were taken; no_slot: shed because "
            "the candidate would have taken the adapter slot of a version callers used lately; preempted: "
            "aborted for a real request).",
        ]
    )


def _per_round_spread(document: dict[str, Any]) -> list[str]:
    """Each setting's requests/s round by round: the spread the ratios above have to be read against."""
    rounds = document.get("per_round")
    if not rounds:
        return []
    spread = "; ".join(
        f"{setting} " + ", ".join(_num(figures["requests_per_s"], 3) for figures in measured)
        for setting, measured in rounds.items()
    )
    return [f"Requests/s of each round, in order: {spread}."]


def _false_alarms(windows: dict[str, Any]) -> str:
    """The share of windows read drifted, and the statistic over most often, with its share."""
    over = windows["over"]
    worst = max(over, key=over.get)
    return f"{_num(windows['any_over'], 3)}" + (f" ({worst} {_num(over[worst], 3)})" if over[worst] else "")


def _caught(windows: dict[str, Any]) -> str:
    """The share of windows read drifted, and the statistics over in most of them."""
    most = [name for name, share in windows["over"].items() if share > 0.5]
    return f"{_num(windows['any_over'], 3)}" + (f" ({', '.join(most)})" if most else "")


def drift_calibration(document: dict[str, Any]) -> str:
    """bench.drift.calibration: false alarms of unchanged traffic per window size, and power per shift."""
    adapters = document["adapters"]
    sizes = [entry["size"] for entry in next(iter(adapters.values()))["false_alarms"]]
    shifts = list(next(iter(adapters.values()))["power"])
    power_size = next(iter(next(iter(adapters.values()))["power"].values()))["size"]

    def label(name: str, adapter: dict[str, Any]) -> str:
        reference = adapter["reference"]
        return f"{name} ({adapter['form']}; {reference['prompts']} prompts, {reference['answers']} answers)"

    return "\n\n".join(
        [
            f"Three adapters trained through the API on {document['train']} examples each; "
            f"{document['prompts']} prompts recorded per kind of traffic; false-alarm rate "
            f"{document['false_alarm_rate']:g}, prompt scoring {document['prompt_scoring_fraction']:g}. "
            "Share of windows of traffic like the training data read drifted (any statistic over), and the "
            "statistic over most often:",
            _table(
                ["adapter (form; reference)", *(f"window {size}" for size in sizes)],
                ([label(name, a), *(_false_alarms(w) for w in a["false_alarms"])] for name, a in adapters.items()),
            ),
            f"Share of windows of {power_size} shifted requests read drifted, and the statistics over in most:",
            _table(
                ["adapter", *(shift.replace("_", " ") for shift in shifts)],
                ([name, *(_caught(a["power"][shift]) for shift in shifts)] for name, a in adapters.items()),
            ),
        ]
    )


def _over(drift: dict[str, Any] | None) -> str:
    if drift is None:
        return "-"
    over = ", ".join(drift["over"]) or "none"
    return f"{over} ({_num(drift['window_requests'])} requests)"


def loop(document: dict[str, Any]) -> str:
    """bench.loop: v1 and v2 on the old and the new traffic, the gate, drift before and after, the timeline."""
    match, gate, facts, data = document["exact_match"], document["gate"], document["facts_lost"], document["data"]
    times = document["seconds_from_first_a_prime_request"]
    cost = document["cost"]
    return "\n\n".join(
        [
            f"Task `{document['task']}`: v1 trained on {document['train']} examples of the task in English (A); "
            f"traffic then moves to the same task in French (A'), which v1 never saw, scored and corrected by its "
            "callers. "
            f"Exact match (normalised) on {document['held_out']} held-out prompts of each, through serving:",
            _table(
                ["version", "A' (new traffic)", "A (its own task)", "facts lost"],
                [
                    ["v1", _num(match["v1"]["a_prime"], 2), _num(match["v1"]["a"], 2), _num(facts["v1"])],
                    ["v2", _num(match["v2"]["a_prime"], 2), _num(match["v2"]["a"], 2), _num(facts["v2"])],
                ],
            ),
            f"v2 over v1: {document['gain_on_a_prime']:+.2f} on A', {document['change_on_a']:+.2f} on A. Its data: "
            f"{_num(data['captures_corrected'])} corrected captures, {_num(data['captures_rated_good'])} rated good, "
            f"{_num(data['parent_examples'])} examples of v1's data; its gate "
            f"{'passed' if gate['passed'] else 'failed'} (v1 -> v2: parent task {_num(gate['parent_task'][0], 2)} -> "
            f"{_num(gate['parent_task'][1], 2)}, held-out captures {_num(gate['new_traffic'][0], 2)} -> "
            f"{_num(gate['new_traffic'][1], 2)}).",
            _table(
                ["drift statistics over on A'", "statistics over"],
                [
                    ["v1 (before)", _over(document["drift_on_a_prime"]["v1"])],
                    ["v2 (after)", _over(document["drift_on_a_prime"]["v2"])],
                ],
            ),
            f"Seconds from the first A' request (alerts' `for` cut to {document['alert_for_seconds']} s; "
            f"alert: {document['alert'] or '-'}): "
            + ", ".join(f"{stage.replace('_', ' ')} {_num(seconds, 0)}" for stage, seconds in times.items())
            + f"; promoted: {'yes' if document['promoted'] else 'no'}. Cost: the retrain job ran "
            f"{_num(cost['retrain_job_seconds'], 0)} s (v1's {_num(cost['v1_job_seconds'], 0)} s), "
            f"{_num(cost['a_prime_requests_sent'])} A' requests were sent.",
        ]
    )


def _load_table(load: dict[str, Any]) -> str:
    rss = load["rss_mib"]
    header = ["requests", "tokens", "tokens/s", "errors", "answers unlike the adapter's own"]
    header += ["RSS before MiB", "peak MiB", "growth MiB", "of it in the second half"]
    row = [_num(load["requests"]), _num(load["tokens"]), _num(load["tokens_per_s"]), _num(load["error_count"])]
    row += [_num(load["mismatches"]), _num(rss["before_load"], 0), _num(rss["peak"], 0), _num(rss["growth"], 0)]
    row += [_num(rss.get("growth_second_half"), 0)]
    return _table(header, [row])


def reliability(document: dict[str, Any]) -> str:
    """bench.reliability: fuzz cases and their answers, the fault tests' outcomes, sustained load."""
    fuzz, load = document["fuzz"], document["load"]
    answers = {
        target: ", ".join(f"{_num(n)} {status}" for status, n in t["statuses"].items())
        for target, t in fuzz["targets"].items()
    }
    return "\n\n".join(
        [
            f"Fuzzing, {_num(fuzz['cases'])} cases; no INTERNAL answer and healthy after: "
            f"{_num(fuzz['never_internal_and_healthy_after'])}.",
            _table(
                ["target", "cases", "answers"],
                ([target, _num(t["cases"]), answers[target]] for target, t in fuzz["targets"].items()),
            ),
            f"Faults: {document['faults_survived']} of {document['faults_tried']} tests passed.",
            _table(["test", "outcome"], ([f"`{name}`", outcome] for name, outcome in document["faults"].items())),
            f"Load: {load['streams']} streams at once for {_num(load['seconds'], 0)} s, {load['adapters']} "
            f"adapters over {load['engine_slots']} engine slots, {load['max_tokens']} greedy tokens per request:",
            _load_table(load),
        ]
    )


RENDERERS: tuple[tuple[Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], str]], ...] = (
    (lambda d: "fuzz" in d, reliability),
    (lambda d: "gain_on_a_prime" in d, loop),
    (lambda d: "drift_on" in d, drift),
    (lambda d: "release_none" in d, releases),
    (lambda d: "false_alarm_rate" in d and "adapters" in d, drift_calibration),
    (lambda d: "task" in d and "plain" in d, quality),
    (lambda d: isinstance(d.get("systems"), dict), training),
    (lambda d: isinstance(d.get("results"), list), serving),
)
"""(does this renderer know the document, renderer), first match wins."""


def render(path: Path) -> str:
    """One results file as markdown: where it came from, then its tables."""
    document = json.loads(path.read_text())
    renderer = next((render for knows, render in RENDERERS if knows(document)), None)
    if renderer is None:
        raise UnknownResults(f"{path}: no renderer knows this results document")
    model = f"`{document['model']}`" if document.get("model") else NOT_RECORDED
    heading = f"**`bench/results/{path.name}`**: model {model}; machine: {machine(document)}; date: {date(document)}."
    return f"{heading}\n\n{renderer(document)}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--held-out-tasks"]:
        print(held_out_tasks_summary())
        sys.exit()
    for name in sys.argv[1:] or sorted(p.name for p in RESULTS.glob("*.json")):
        print(render(RESULTS / name), end="\n\n")
