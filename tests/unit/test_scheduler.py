"""The scheduler decides alone, from counts and flags: sequences are admitted in arrival order within
the row limit, prefilled together per batch key and decoded in the same step with their batch; a
sequence whose caller left is released, running or never admitted; a finished one frees its row for the next."""

from __future__ import annotations

from serving_svc.engines.base import GenerationRequest, SamplingOptions
from serving_svc.engines.scheduler import Scheduler, Sequence

STACKED, DORA = "", "dora-adapter"


def _sequence(batch_key: str = STACKED, prompt_tokens: int = 3) -> Sequence:
    request = GenerationRequest("request", tuple(range(prompt_tokens)), SamplingOptions(max_tokens=4))
    return Sequence(request=request, adapter_name="__base__", batch_key=batch_key)


def _scheduler(max_batch_size: int, *sequences: Sequence) -> Scheduler:
    scheduler = Scheduler(max_batch_size)
    for sequence in sequences:
        scheduler.add(sequence)
    return scheduler


def test_sequences_are_admitted_in_order_within_the_row_limit_and_decode_with_their_batch() -> None:
    first, dora, second, third = _sequence(), _sequence(DORA), _sequence(prompt_tokens=9), _sequence()
    scheduler = _scheduler(3, first, dora, second, third)

    plan = scheduler.schedule()
    assert plan.prefills == {STACKED: [first, second], DORA: [dora]}
    assert plan.decodes == plan.prefills, "admitted sequences take their second token in the same step"
    assert (scheduler.running_count, scheduler.waiting_count) == (3, 1)

    plan = scheduler.schedule()
    assert plan.decodes == {STACKED: [first, second], DORA: [dora]}
    assert plan.prefills == {}, "no row is free for the third"

    scheduler.finish([dora])
    plan = scheduler.schedule()
    assert plan.prefills == {STACKED: [third]}
    assert plan.decodes == {STACKED: [first, second, third]}
    assert (scheduler.running_count, scheduler.waiting_count) == (3, 0)


def test_a_sequence_whose_caller_left_is_released_or_never_admitted() -> None:
    running, queued, other = _sequence(), _sequence(), _sequence()
    scheduler = _scheduler(1, running, queued, other)
    scheduler.schedule()
    running.aborted = queued.aborted = True

    plan = scheduler.schedule()
    assert plan.released == [running, queued], "the engine forgets a queued one whose caller left too"
    assert plan.prefills == {STACKED: [other]}, "the queued one was skipped; its row went to the next"
    assert plan.decodes == {STACKED: [other]}
    assert (scheduler.running_count, scheduler.waiting_count) == (1, 0)


def test_a_waiting_sequence_whose_caller_left_is_released_while_every_row_is_taken() -> None:
    running, queued = _sequence(), _sequence()
    scheduler = _scheduler(1, running, queued)
    scheduler.schedule()
    queued.aborted = True

    plan = scheduler.schedule()
    assert plan.released == [queued], "not kept until a row frees: its stream would live as long"
    assert plan.decodes == {STACKED: [running]}
    assert (scheduler.running_count, scheduler.waiting_count) == (1, 0)


def test_a_sequence_finished_at_its_prefill_leaves_the_next_plans() -> None:
    short, long = _sequence(), _sequence()
    scheduler = _scheduler(4, short, long)
    scheduler.schedule()
    scheduler.finish([short])
    assert scheduler.schedule().decodes == {STACKED: [long]}


def test_take_all_hands_over_every_sequence_and_leaves_nothing_to_do() -> None:
    admitted, waiting = _sequence(), _sequence(DORA)
    scheduler = _scheduler(1, admitted, waiting)
    scheduler.schedule()
    assert scheduler.has_work
    assert scheduler.take_all() == [waiting, admitted]
    assert not scheduler.has_work
    assert (scheduler.running_count, scheduler.waiting_count) == (0, 0)
