"""Per-token log-probabilities of token sequences under a model: the measure behind every metric.

Validation loss, the forgetting probe and the drift profile's prompt surprise all come from the
same numbers, so they agree with each other by construction.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module | PreTrainedModel, sequences: list[list[int]], *, batch_size: int
) -> list[np.ndarray]:
    """For each sequence of n tokens, the n - 1 log-probabilities of tokens 1..n-1 given those before.

    Batches are right-padded; the padding is masked from attention and dropped from the result.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[np.ndarray] = []
    try:
        for first in range(0, len(sequences), batch_size):
            batch = sequences[first : first + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, sequence in enumerate(batch):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for row, sequence in enumerate(batch):
                results.append(logprobs[row, : len(sequence) - 1].cpu().numpy())
    finally:
        model.train(was_training)
    return results
