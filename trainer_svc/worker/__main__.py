"""`python -m trainer_svc.worker INPUT.json`: run one training job and report it as events.

`python -m trainer_svc.worker --from-store STORE_URI JOB_ID` fetches the input the trainer staged
in the store first (`staged_input.py`); a Kubernetes Job's pod runs it so. The S3 endpoint, if
any, comes from LORAPLANE_S3_ENDPOINT_URL. Under `torchrun` (several GPUs in one pod) every rank
trains and the first one alone reports, evaluates and publishes.

The last event is a ResultEvent (exit 0) or an ErrorEvent (exit 1). A cancelled job is stopped
with SIGTERM: the worker exits at once and publishes nothing, since an adapter only becomes
visible when its manifest is written last. A trainer that stops sends SIGUSR1 instead: during
training the worker saves a checkpoint at the end of the current step before it exits, so the
job goes on from that step when the trainer starts again. Once publishing has begun, SIGTERM waits until the
ResultEvent is out, so a published adapter is always reported (the trainer's SIGKILL after its
grace period can still cut an upload short; an unfinished version stays invisible).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from transformers import set_seed

from loraplane.answer_form import derive_form
from loraplane.artifact import DatasetInfo, GateVerdict
from loraplane.drift import Profile
from loraplane.errors import ErrorCode, LoraplaneError
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import open_store
from trainer_svc import staged_input
from trainer_svc.dataset import fingerprint
from trainer_svc.progress import Checkpoint, ErrorEvent, PhaseEvent, ResultEvent, TaskScore
from trainer_svc.spec import JobSpec
from trainer_svc.worker.evaluate import evaluate, token_statistics
from trainer_svc.worker.events import Emit, claim_stdout
from trainer_svc.worker.gate import gate_figures, judge_against_parent
from trainer_svc.worker.generation import generation_batch_size
from trainer_svc.worker.knowledge_probe import FACTS_LOST_WARNING, ProbeResult, knowledge_probe
from trainer_svc.worker.model import adapter_config, load_base_model, load_tokenizer
from trainer_svc.worker.parent_weights import fetch_parent
from trainer_svc.worker.preference import preference_scores, train_preferences
from trainer_svc.worker.publish import publish, start_trial
from trainer_svc.worker.resume import checkpoint_step, resume_point
from trainer_svc.worker.task_metrics import metrics_left_out, task_scores
from trainer_svc.worker.train import train
from trainer_svc.worker.training_run import ModelToTrain, Train, TrainedAdapter, TrainingRun, TrainingSets
from trainer_svc.worker.training_sets import load_training_sets
from trainer_svc.worker_input import PARENT_PID_ENV, PREEMPT_SIGNAL, WorkerInput


def run(worker_input: WorkerInput, emit: Emit, *, main_process: bool = True) -> None:
    """The job's phases in order; any failure raises. In a distributed run (torchrun) every process
    trains its share of each batch; only the first (`main_process`) evaluates and publishes."""
    set_seed(worker_input.spec.training.seed)  # before the adapter exists: its initial weights are random too
    model = _load_model(worker_input, emit)
    data = load_training_sets(worker_input, model, emit)
    trained = _train(worker_input, model, data, emit)
    if not main_process:
        return
    assessment = _evaluate(worker_input.spec, trained, model, data, emit)
    _publish(worker_input, trained, assessment, data, emit)


def _load_model(worker_input: WorkerInput, emit: Emit) -> ModelToTrain:
    """The base model, its tokenizer, the configuration of the adapter the job gives it, and the weights it
    starts from when the job continues a version."""
    spec = worker_input.spec
    start = f", continuing {spec.parent}" if spec.parent else ""
    emit(PhaseEvent(phase="loading_model", message=f"{spec.method} on {spec.base_model}{start}"))
    tokenizer = load_tokenizer(worker_input.base_model_path)
    base = load_base_model(worker_input.base_model_path, spec)
    config = adapter_config(base, spec)
    return ModelToTrain(base, config, tokenizer, fetch_parent(worker_input))


def _train(worker_input: WorkerInput, model: ModelToTrain, data: TrainingSets, emit: Emit) -> TrainedAdapter:
    """Train by the job's method, from its last checkpoint if an earlier worker saved one; a run the trainer
    preempts exits here, its checkpoint saved."""
    spec = worker_input.spec
    output_dir = worker_input.work_dir / "checkpoints"
    resume_from = resume_point(output_dir, base_model_fingerprint(worker_input.base_model_path))
    notes = [f"resuming from the checkpoint at step {checkpoint_step(resume_from)}"] if resume_from else []
    if data.replayed:
        notes.append(f"{len(data.replayed)} replay examples (the base model's answers to general questions) added")
    emit(PhaseEvent(phase="training", message="; ".join(notes)))
    method: Train = train_preferences if spec.method.learns_preferences else train
    trained = method(model, data, TrainingRun(spec.training, spec.dpo, output_dir, resume_from, emit))
    if trained.outcome.preempted_at is not None:
        emit(
            PhaseEvent(
                phase="training",
                message=f"checkpoint saved at step {trained.outcome.preempted_at} as the trainer stops; the job "
                "goes on from it when the trainer starts again",
            )
        )
        raise SystemExit(128 + PREEMPT_SIGNAL)
    return trained


@dataclass(frozen=True)
class Assessment:
    """What evaluating the trained adapter found: the manifest's metrics, the task scores and the drift profile."""

    metrics: dict[str, float]
    scores: list[TaskScore]
    profile: Profile
    gate: GateVerdict | None = None
    """A continued job's verdict against its parent; None for a fresh adapter."""


def _evaluate(
    spec: JobSpec, trained: TrainedAdapter, loaded: ModelToTrain, data: TrainingSets, emit: Emit
) -> Assessment:
    """Score the adapter against its base: losses, the forgetting probe, held-out preferences (DPO) and task
    answers, and the facts it lost; the drift profile of its held-out data."""
    model, train_set, tokenizer = trained.model, data.train.tokenized, loaded.tokenizer
    metrics = {**trained.outcome.metrics, **token_statistics(train_set), "replay_examples": float(len(data.replayed))}
    scored = data.scored()  # the test examples, else each validation set apart
    every_scored = [example for examples in scored.values() for example in examples.tokenized]
    left_out = metrics_left_out(tokenizer, every_scored, spec.task_metrics)
    note = ", ".join(f"{metric} ({why})" for metric, why in left_out.items())
    emit(PhaseEvent(phase="evaluating", message=f"evaluating; task metrics left out: {note}" if note else ""))
    batch_size = spec.training.batch_size
    generation_batch = generation_batch_size(batch_size)
    evaluation = evaluate(
        model,
        tokenizer,
        [*data.train.as_sent(), *data.validation.as_sent()],
        data.early_stopping.tokenized,
        data.drift_reference.tokenized,
        derive_form([answer for example in data.train.sourced if (answer := example.answer_text()) is not None]),
        batch_size=batch_size,
        generation_batch_size=generation_batch,
    )
    metrics.update(evaluation.metrics)
    held_out = data.test if data.test.tokenized else data.validation  # the pairs DPO's preferences are scored on
    if spec.method.learns_preferences and held_out.tokenized:
        metrics.update(preference_scores(model, held_out.tokenized, held_out.rejected, batch_size=batch_size))
    scores = [
        score
        for label, examples in scored.items()
        for score in task_scores(
            model, tokenizer, examples.tokenized, spec.task_metrics, label, batch_size=generation_batch
        )
    ]
    for score in scores:  # the manifest keeps the first set's too (test, else unseen groups), as plain numbers
        metrics.setdefault(f"task_{score.metric}_base", score.base)
        metrics.setdefault(f"task_{score.metric}_adapter", score.adapter)
    probe = knowledge_probe(model, tokenizer, data.prompt_format, batch_size=generation_batch)
    metrics.update(probe_facts_known=float(len(probe.known)), probe_facts_lost=float(len(probe.lost)))
    if len(probe.lost) >= FACTS_LOST_WARNING:
        emit(PhaseEvent(phase="evaluating", message=_facts_lost_warning(probe, trained.outcome.checkpoints)))
    gate = None
    if loaded.parent is not None:
        gate = judge_against_parent(model, tokenizer, loaded.parent, data, spec, batch_size=generation_batch)
        metrics.update(gate_figures(gate))
        emit(PhaseEvent(phase="evaluating", message=gate.describe()))
    return Assessment(metrics, scores, evaluation.profile, gate)


def _facts_lost_warning(probe: ProbeResult, checkpoints: list[Checkpoint]) -> str:
    probed = [checkpoint.facts_lost for checkpoint in checkpoints if checkpoint.facts_lost is not None]
    every = "; every checkpoint probed during training had lost some" if probed and min(probed) > 0 else ""
    return (
        f"warning: the adapter lost {len(probe.lost)} of the {len(probe.known)} general facts its base model knew "
        f"({'; '.join(probe.lost)}){every}: fewer steps, a lower learning rate or a higher replay_fraction forget less"
    )


def _publish(
    worker_input: WorkerInput, trained: TrainedAdapter, assessment: Assessment, data: TrainingSets, emit: Emit
) -> None:
    """Publish the adapter as its name's next version and report it; SIGTERM waits until the report is out."""
    emit(PhaseEvent(phase="publishing", message=f"publishing {worker_input.spec.adapter_name}"))
    train, validation = data.train.sourced, data.validation.sourced
    dataset = DatasetInfo(
        fingerprint=fingerprint(train + validation), train_examples=len(train), validation_examples=len(validation)
    )
    metrics = {**assessment.metrics, "train_examples": float(len(train)), "validation_examples": float(len(validation))}
    with _sigterm_deferred():
        adapter = publish(
            trained.model, assessment.profile, metrics, dataset, data.prompt_format, worker_input, assessment.gate
        )
        if worker_input.spec.release is not None:
            gate = assessment.gate
            started = (
                start_trial(adapter, worker_input.spec.release, worker_input)
                if gate is None or gate.passed
                else f"warning: {adapter.name}@v{adapter.version} is published but not on trial: it failed its gate "
                f"against {gate.parent}"
            )
            emit(PhaseEvent(phase="publishing", message=started))
        checkpoints = trained.outcome.checkpoints
        emit(ResultEvent(adapter=adapter, metrics=metrics, task_scores=assessment.scores, checkpoints=checkpoints))


@contextlib.contextmanager
def _sigterm_deferred() -> Iterator[None]:
    """Hold SIGTERM (and the trainer's preemption signal) back until the block ends; they are then
    delivered as usual."""
    signals = {signal.SIGTERM, PREEMPT_SIGNAL}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit is not an Exception: no library `except Exception` swallows it, and nothing
    # after the current torch operation runs, publishing included.
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """Get SIGTERM when the trainer that started this worker dies, however it dies.

    A trainer that crashes re-queues its running jobs on restart; an orphaned worker that went
    on to publish would then give the job a second version.
    """
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        parent = os.environ.get(PARENT_PID_ENV)
        if parent and os.getppid() != int(parent):  # it died before the line above: no signal will come
            raise SystemExit(128 + signal.SIGTERM)


S3_ENDPOINT_ENV = "LORAPLANE_S3_ENDPOINT_URL"


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(PREEMPT_SIGNAL, _exit_on_sigterm)  # during training, a checkpoint is saved first (train.py)
    _die_with_parent()
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun
    events = claim_stdout(reports=rank == 0)
    if len(argv) != 1 and not (len(argv) == 3 and argv[0] == "--from-store"):
        usage = "usage: python -m trainer_svc.worker INPUT.json | --from-store STORE_URI JOB_ID"
        events.emit(ErrorEvent(code=ErrorCode.INVALID_ARGUMENT, message=usage))
        return 1
    try:
        if len(argv) == 3:
            store = open_store(argv[1], s3_endpoint_url=os.environ.get(S3_ENDPOINT_ENV) or None)
            worker_input = staged_input.fetch(store, argv[2])
        else:
            worker_input = WorkerInput.model_validate_json(Path(argv[0]).read_text())
        run(worker_input, events.emit, main_process=rank == 0)
    except LoraplaneError as exc:
        events.emit(ErrorEvent(code=exc.error_code, message=exc.message, field=exc.field))
        return 1
    except Exception as exc:
        traceback.print_exc()
        events.emit(ErrorEvent(code=ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
