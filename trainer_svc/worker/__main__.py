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
from pathlib import Path
from types import FrameType

import torch
from peft import get_peft_model
from transformers import PreTrainedTokenizerBase, set_seed

from loraplane.artifact import DatasetInfo, PromptFormat
from loraplane.errors import ErrorCode, LoraplaneError
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import open_store
from trainer_svc import staged_input
from trainer_svc.dataset import SourcedExample, fingerprint, read_examples
from trainer_svc.progress import ErrorEvent, PhaseEvent, ResultEvent
from trainer_svc.spec import TrainingParameters
from trainer_svc.worker.evaluate import evaluate, token_statistics
from trainer_svc.worker.events import Emit, claim_stdout
from trainer_svc.worker.generation import generation_batch_size
from trainer_svc.worker.knowledge_probe import FACTS_LOST_WARNING, knowledge_probe
from trainer_svc.worker.model import adapter_config, load_base_model, load_tokenizer
from trainer_svc.worker.preference import preference_scores, rejected_answers, train_preferences
from trainer_svc.worker.publish import publish
from trainer_svc.worker.replay import replay_count, replay_examples
from trainer_svc.worker.resume import checkpoint_step, resume_point
from trainer_svc.worker.task_metrics import task_scores
from trainer_svc.worker.tokenization import TokenizedExample, resolve_prompt_format, tokenize_examples
from trainer_svc.worker.train import train
from trainer_svc.worker_input import PARENT_PID_ENV, PREEMPT_SIGNAL, WorkerInput


def run(worker_input: WorkerInput, emit: Emit, *, main_process: bool = True) -> None:
    """The job's phases in order; any failure raises. In a distributed run (torchrun) every process
    trains its share of each batch; only the first (`main_process`) evaluates and publishes."""
    spec = worker_input.spec
    set_seed(spec.training.seed)  # before the adapter exists: its initial weights are random too

    emit(PhaseEvent(phase="loading_model", message=f"{spec.method} on {spec.base_model}"))
    tokenizer = load_tokenizer(worker_input.base_model_path)
    base = load_base_model(worker_input.base_model_path, spec)
    lora = adapter_config(base, spec)

    train_examples = read_examples(worker_input.train_file)
    validation_examples = read_examples(worker_input.validation_file)
    test_examples = read_examples(worker_input.test_file) if worker_input.test_file else []
    prompt_format = resolve_prompt_format(spec.prompt_format, tokenizer)
    emit(
        PhaseEvent(
            phase="tokenizing",
            message=f"{len(train_examples)} training and {len(validation_examples)} validation examples, "
            f"prompts in {prompt_format} format",
        )
    )
    validation_field = "spec.validation_data" if spec.validation_data else "spec.training_data"
    sets = [
        (train_examples, "spec.training_data"),
        (validation_examples, validation_field),
        (test_examples, "spec.test_data"),
    ]

    def tokenized(examples: list[SourcedExample], field: str) -> list[TokenizedExample]:
        return tokenize_examples(
            examples, tokenizer, prompt_format=prompt_format, max_seq_length=spec.training.max_seq_length, field=field
        )

    train_set, validation_set, test_set = (tokenized(examples, field) for examples, field in sets)
    preferences = spec.method.learns_preferences
    replayed = [] if preferences else _replay(base, tokenizer, prompt_format, train_set, spec.training)
    # The sets above hold each pair's chosen answer; the rejected ones are checked for length before training too.
    _, rejected_validation, rejected_test = (
        [tokenized(rejected_answers(examples), field) for examples, field in sets] if preferences else [[], [], []]
    )

    output_dir = worker_input.work_dir / "checkpoints"
    resume_from = resume_point(output_dir, base_model_fingerprint(worker_input.base_model_path))
    notes = [f"resuming from the checkpoint at step {checkpoint_step(resume_from)}"] if resume_from else []
    if replayed:
        notes.append(f"{len(replayed)} replay examples (the base model's answers to general questions) added")
    emit(PhaseEvent(phase="training", message="; ".join(notes)))
    if preferences:
        model, outcome = train_preferences(
            base,
            lora,
            tokenizer,
            train_examples,
            validation_examples,
            params=spec.training,
            dpo=spec.dpo,
            prompt_format=prompt_format,
            validation_field=validation_field,
            output_dir=output_dir,
            emit=emit,
            resume_from=resume_from,
        )
    else:
        model = get_peft_model(base, lora)
        outcome = train(
            model, tokenizer, train_set + replayed, validation_set, spec.training, output_dir, emit, resume_from
        )
    if outcome.preempted_at is not None:
        emit(
            PhaseEvent(
                phase="training",
                message=f"checkpoint saved at step {outcome.preempted_at} as the trainer stops; the job goes on from "
                "it when the trainer starts again",
            )
        )
        raise SystemExit(128 + PREEMPT_SIGNAL)
    if not main_process:
        return
    metrics = {**outcome.metrics, **token_statistics(train_set), "replay_examples": float(len(replayed))}

    emit(PhaseEvent(phase="evaluating"))
    batch_size = spec.training.batch_size
    generation_batch = generation_batch_size(batch_size)
    evaluation = evaluate(
        model, tokenizer, train_set, validation_set, batch_size=batch_size, generation_batch_size=generation_batch
    )
    metrics.update(evaluation.metrics)
    if preferences and (test_set or validation_set):  # held-out pairs: the test pairs, else the validation pairs
        chosen, rejected = (test_set, rejected_test) if test_set else (validation_set, rejected_validation)
        metrics.update(preference_scores(model, chosen, rejected, batch_size=batch_size))
    scores = task_scores(model, tokenizer, test_set or validation_set, spec.task_metrics, batch_size=generation_batch)
    for score in scores:  # the manifest keeps them too, as plain numbers
        metrics.update({f"task_{score.metric}_base": score.base, f"task_{score.metric}_adapter": score.adapter})
    probe = knowledge_probe(model, tokenizer, prompt_format, batch_size=generation_batch)
    metrics.update(probe_facts_known=float(len(probe.known)), probe_facts_lost=float(len(probe.lost)))
    if len(probe.lost) >= FACTS_LOST_WARNING:
        emit(
            PhaseEvent(
                phase="evaluating",
                message=f"warning: the adapter lost {len(probe.lost)} of the {len(probe.known)} general facts its "
                f"base model knew ({'; '.join(probe.lost)}): fewer steps or a lower learning rate forget less",
            )
        )

    emit(PhaseEvent(phase="publishing", message=spec.adapter_name))
    dataset = DatasetInfo(
        fingerprint=fingerprint(train_examples + validation_examples),
        train_examples=len(train_examples),
        validation_examples=len(validation_examples),
    )
    metrics.update(train_examples=float(dataset.train_examples), validation_examples=float(dataset.validation_examples))
    with _sigterm_deferred():
        adapter = publish(model, evaluation.profile, metrics, dataset, prompt_format, worker_input)
        emit(ResultEvent(adapter=adapter, metrics=metrics, task_scores=scores, checkpoints=outcome.checkpoints))


def _replay(
    base: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    train_set: list[TokenizedExample],
    params: TrainingParameters,
) -> list[TokenizedExample]:
    """The replay examples of a supervised job (none for text examples, which have no prompts to answer)."""
    count = replay_count(len(train_set), params.replay_fraction)
    if not count or not all(example.prompt_length for example in train_set):
        return []
    return replay_examples(
        base,
        tokenizer,
        prompt_format,
        count,
        max_seq_length=params.max_seq_length,
        batch_size=generation_batch_size(params.batch_size),
    )


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
