"""The transformers engine's model runner: the model, its KV caches, the adapters it applies, its logits.

It executes what the scheduler planned, as vLLM's model runner does: it keeps one decode batch per
batch key (`batch.py`: rows, mask and cache), maps each sequence to its row, prepares each forward
pass's inputs, applies every row's own adapter (`lora_adapters.py`), runs the model and hands back
logits, one row per sequence, for the output processor. Engine thread only.

Drift's prompt embedding is the decoder's output at a prompt's last token, which the prefill computes
anyway: it is captured for the rows that ask for it. Prompt scores (drift's prompt surprise) need
every position's logits of the scored prompts. They
are taken from the decoder's hidden states of those rows alone, through the LM head, when that is
what the model's own forward computes (checked on a probe at load: `compat.head_reproduced`). A
model whose forward changes its logits further (Granite's `logits_scaling`, Cohere's `logit_scale`)
scores its prompts with its own forward instead, in a pass of their own: slower, and never wrong.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch

from loraplane.drift import prompt_embedding
from serving_svc.engines import compat
from serving_svc.engines.batch import DecodeBatch
from serving_svc.engines.lora_adapters import LoraAdapters
from serving_svc.engines.scheduler import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prefilled:
    """Sequences whose prompts ran together, in a batch of their own until `ModelRunner.admit` joins it."""

    batch_key: str
    sequences: list[Sequence]
    batch: DecodeBatch
    logits: torch.Tensor
    """[sequences, vocabulary]: each one's logits for its first generated token."""
    prompt_measures: dict[Sequence, PromptMeasures]
    """What drift measures of the prompts of the sequences that asked for it."""


@dataclass(frozen=True)
class PromptMeasures:
    logprob: float | None = None
    """The log-probability of the prompt's tokens 1..n-1, where its score was asked for."""
    embedding: tuple[float, ...] | None = None
    """The prompt's drift embedding, where it was asked for."""


class ModelRunner:
    """Executes the scheduler's plans on the model: prefills, decode steps, rows freed."""

    def __init__(self, model: torch.nn.Module, expected_adapters: int) -> None:
        self._model = model
        self.adapters = LoraAdapters(model, expected_adapters)
        self._batches: dict[str, tuple[DecodeBatch, list[Sequence | None]]] = {}  # None: a free row
        self._rows: dict[Sequence, int] = {}
        self._head_reproduced = compat.head_reproduced(model)
        if not self._head_reproduced:
            log.info(
                "%s changes the logits its LM head gives: prompts are scored by a forward pass of their own",
                type(model).__name__,
            )

    def prefill(self, batch_key: str, sequences: list[Sequence]) -> Prefilled:
        """Run the prompts of `sequences` (one batch key) together, scoring those that ask for it."""
        batch, input_ids = DecodeBatch.for_prompts(
            [s.request.prompt_token_ids for s in sequences], [s.adapter_name for s in sequences]
        )
        scored = [row for row, s in enumerate(sequences) if s.request.score_prompt]
        embedded = [row for row, s in enumerate(sequences) if s.request.embed_prompt]
        rows = sorted({*embedded, *(scored if self._head_reproduced else ())})
        positions = batch.positions()
        with self.adapters.applied(batch_key, batch.adapter_names, running=False):
            logits, hidden = compat.forward(self._model, input_ids, batch.mask, positions, batch.cache, hidden_of=rows)
        of_row = dict(zip(rows, hidden, strict=True)) if hidden is not None else {}
        # Left-padded: every row's last column is its prompt's last token.
        embeddings = {row: prompt_embedding(of_row[row][-1].float().cpu().numpy()) for row in embedded}
        logprobs: dict[int, float] = {}
        if scored:
            scored_hidden = torch.stack([of_row[row] for row in scored]) if self._head_reproduced else None
            every_position = self._every_position_logits(batch_key, batch, input_ids, positions, scored, scored_hidden)
            scores = _prompt_logprobs(every_position, input_ids[scored], batch.mask[scored])
            logprobs = dict(zip(scored, scores, strict=True))
        prompt_measures = {
            sequences[row]: PromptMeasures(logprobs.get(row), embeddings.get(row)) for row in {*scored, *embedded}
        }
        return Prefilled(batch_key, sequences, batch, logits, prompt_measures)

    def _every_position_logits(
        self,
        batch_key: str,
        batch: DecodeBatch,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        scored: list[int],
        hidden: torch.Tensor | None,
    ) -> torch.Tensor:
        """Every position's logits of the `scored` rows of a prefill, through the LM head from their
        `hidden` states (no adapter needs applying for that), or (None) by the model's own forward of those
        prompts alone, their adapters applied."""
        if hidden is not None:
            return compat.head_logits(self._model, hidden)
        with self.adapters.applied(batch_key, [batch.adapter_names[row] for row in scored], running=False):
            logits, _ = compat.forward(
                self._model, input_ids[scored], batch.mask[scored], positions[scored], None, every_position=True
            )
            return logits

    def admit(self, prefilled: Prefilled, going_on: list[Sequence]) -> None:
        """Put the rows of `going_on` (of `prefilled`, in its order) into their key's running batch."""
        if not going_on:
            return
        keep = set(going_on)
        rows = [row for row, s in enumerate(prefilled.sequences) if s in keep]
        batch = prefilled.batch
        batch.keep(rows)
        key = prefilled.batch_key
        if key in self._batches:
            running, sequences = self._batches[key]
            places = running.join(batch)
            sequences.extend([None] * (max(places) + 1 - len(sequences)))
            for place, sequence in zip(places, going_on, strict=True):
                sequences[place] = sequence
        else:
            places = list(range(len(going_on)))
            self._batches[key] = (batch, list(going_on))
        self._rows.update(zip(going_on, places, strict=True))

    def decode(self, batch_key: str, sequences: list[Sequence], tokens: list[int]) -> torch.Tensor:
        """Feed each of `sequences` (every live row of the key's batch) its next token; their logits for
        the token after it ([sequences, vocabulary])."""
        batch, rows = self._batches[batch_key]
        assert len(sequences) == len(batch.live), "a decode step runs every live row of its batch"
        if batch.needs_compacting():
            live = batch.live
            batch.keep(live)
            rows = [rows[row] for row in live]
            self._batches[batch_key] = (batch, rows)
            self._rows.update((s, row) for row, s in enumerate(rows) if s is not None)
        next_tokens = [0] * len(batch)
        for sequence, token in zip(sequences, tokens, strict=True):
            next_tokens[self._rows[sequence]] = token
        input_ids, positions = batch.next_inputs(next_tokens)
        with self.adapters.applied(batch_key, batch.adapter_names, running=True):
            logits, _ = compat.forward(self._model, input_ids, batch.mask, positions, batch.cache)
        return logits[[self._rows[s] for s in sequences]]

    def release(self, sequences: list[Sequence]) -> None:
        """Free the rows of `sequences` (finished, or their caller left) for sequences that join later;
        a sequence without a row (never admitted) is skipped."""
        by_key: dict[str, list[int]] = defaultdict(list)
        for sequence in sequences:
            if (row := self._rows.pop(sequence, None)) is not None:
                by_key[sequence.batch_key].append(row)
        for key, rows in by_key.items():
            batch, sequences_in_rows = self._batches[key]
            batch.release(rows)
            for row in rows:
                sequences_in_rows[row] = None
            if not batch.live:
                del self._batches[key]

    def clear(self) -> None:
        """Drop every batch (after a failed step, whose sequences all fail)."""
        self._batches.clear()
        self._rows.clear()


def _prompt_logprobs(every_position: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Each row's sum of log p(token | tokens before it) over its prompt's tokens 1..n-1, from every
    position's logits ([rows, columns, vocabulary]) of left-padded prompts."""
    # log p(token) = its logit - logsumexp(logits): no second [rows, positions, vocabulary] tensor.
    previous = every_position[:, :-1].float()
    chosen = previous.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    token_logprobs = chosen - torch.logsumexp(previous, dim=-1)
    # A prompt's first token (and the left padding before it) has no score.
    real = mask[:, :-1].bool() & mask[:, 1:].bool()
    return (token_logprobs * real).sum(1).tolist()  # type: ignore[no-any-return]
