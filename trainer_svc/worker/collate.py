"""Training batches: padded, and scored only where a token is trained.

An instruction example trains its answer alone, a few tokens at the end of a long prompt (a chat
template's system turn included). Projecting every position onto the vocabulary and taking its
softmax, only to mask most of them out of the loss, is a large share of a training step on a
small model (figures in docs/benchmarks.md). The batch therefore names the positions whose next
token is trained in any of its rows (`logits_to_keep`, which transformers' causal LMs take) and
their targets (`shift_labels`, which their loss and the Trainer's token count take): the loss is
the same, the logits are fewer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from peft import PeftModel
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from trainer_svc.worker.tokenization import IGNORE_INDEX

Collator = Callable[[list[dict[str, Any]]], dict[str, Any]]


class TrainedPositionsCollator:
    """Pads like DataCollatorForSeq2Seq, then keeps logits only at the positions that predict a trained token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._pad = _padding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = self._pad(features)
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        kept = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
        batch["logits_to_keep"] = kept
        batch["shift_labels"] = targets[:, kept]
        return batch


def training_collator(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Collator:
    """TrainedPositionsCollator where the model's forward takes `logits_to_keep` (transformers' causal LMs
    do), else plain padding."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if "logits_to_keep" in inspect.signature(base.forward).parameters:
        return TrainedPositionsCollator(tokenizer)
    return _padding(tokenizer)


def _padding(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pads each batch to its longest example, labels with IGNORE_INDEX."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
