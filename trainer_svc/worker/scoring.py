"""Per-token log-probabilities of token sequences under a model: the measure behind every metric.

Validation loss, the forgetting probe and the drift profile's prompt surprise all come from the
same numbers, so they agree with each other by construction; the drift profile's prompt embeddings
come from the same forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel


@torch.no_grad()
def _scored(
    model: torch.nn.Module | PreTrainedModel, sequences: list[list[int]], batch_size: int, *, last_hidden: bool
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per sequence: the log-probabilities of tokens 1..n-1, and (`last_hidden`) the decoder's output at its
    last token, as serving's engine reads it (captured from the decoder, before the LM head).

    Batches are right-padded; the padding is masked from attention and dropped from the result.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = None
    if last_hidden:
        decoder = model.get_decoder()  # type: ignore[operator]
        hook = decoder.register_forward_hook(lambda module, args, out: captured.append(out.last_hidden_state))
    results: list[tuple[np.ndarray, np.ndarray | None]] = []
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
            captured.clear()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for row, sequence in enumerate(batch):
                hidden = captured[0][row, len(sequence) - 1].float().cpu().numpy() if captured else None
                results.append((logprobs[row, : len(sequence) - 1].cpu().numpy(), hidden))
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    return results


def token_logprobs(
    model: torch.nn.Module | PreTrainedModel, sequences: list[list[int]], *, batch_size: int
) -> list[np.ndarray]:
    """For each sequence of n tokens, the n - 1 log-probabilities of tokens 1..n-1 given those before."""
    return [logprobs for logprobs, _ in _scored(model, sequences, batch_size, last_hidden=False)]


def prompt_scores(
    model: torch.nn.Module | PreTrainedModel, prompts: list[list[int]], *, batch_size: int
) -> list[tuple[float, np.ndarray]]:
    """For each prompt, the sum of the log-probabilities of its tokens 1..n-1 (drift's prompt surprise) and
    the decoder's output at its last token (drift's prompt embedding)."""
    scored = _scored(model, prompts, batch_size, last_hidden=True)
    return [(float(logprobs.sum()), hidden) for logprobs, hidden in scored if hidden is not None]
