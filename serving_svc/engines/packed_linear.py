"""Decode-sized matmuls through oneDNN, with each weight reordered once at load into oneDNN's layout.

A decode step multiplies a few dozen rows by every weight matrix of the model. On a CPU,
PyTorch's default for that shape (MKL's sgemm on the plain [out, in] weight) is slow; oneDNN on a
weight packed once for the expected number of rows is faster per layer, most of all on the
vocabulary projection, with the same greedy tokens. vLLM's CPU backend does the same
(`dispatch_cpu_unquantized_gemm`, oneDNN's prepacked matmul). Past `PACKED_UP_TO_ROWS` rows (a
long prefill) PyTorch's own matmul is as fast or faster, so it keeps those. The private ops it
takes are reached through `compat` (`onednn_*`).

The packed copy sits beside the original weight, which stays for peft (DoRA reads it), for
weights tied to the embedding and for long inputs: packing costs the linear layers' size in
memory once more. The ops are the ones PyTorch's inductor uses for the same purpose; every layer
is checked against `torch.nn.functional.linear` when it is packed, and a build of PyTorch without
them serves with the plain matmul.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from serving_svc.engines.compat import onednn_linear, onednn_pack, onednn_packs

log = logging.getLogger(__name__)

PACKED_UP_TO_ROWS = 256
"""Inputs of at most this many rows (tokens in the batch) take the packed weight: about where PyTorch's
own matmul catches up."""


def pack_linear_weights(model: torch.nn.Module, expected_rows: int) -> int:
    """Give every linear layer of `model` a oneDNN-packed weight for inputs of about `expected_rows` rows.

    Returns how many layers were packed: 0 where this PyTorch or CPU cannot (the model then
    runs exactly as before).
    """
    if not onednn_packs(next(model.parameters()).dtype):
        return 0
    packed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.device.type == "cpu":
            forward = _packed_forward(module, expected_rows)
            if forward is None:
                log.warning("oneDNN packing disagrees with the plain matmul; serving with the plain one")
                return packed
            module.forward = forward  # type: ignore[method-assign,assignment]
            packed += 1
    return packed


def _packed_forward(linear: torch.nn.Linear, expected_rows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The layer's forward on its packed weight, or None when the packed result differs from the plain one."""
    weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    with torch.inference_mode():
        packed = onednn_pack(weight, expected_rows)
        probe = torch.randn((2, linear.in_features), dtype=weight.dtype)
        plain = torch.nn.functional.linear(probe, weight, bias)
        fast = onednn_linear(probe, packed, bias)
        tolerance = 1e-3 if weight.dtype == torch.float32 else 5e-2
        if not torch.allclose(fast, plain, rtol=tolerance, atol=tolerance):
            return None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.numel() // linear.in_features <= PACKED_UP_TO_ROWS:
            return onednn_linear(x, packed, linear.bias)
        return torch.nn.functional.linear(x, linear.weight, linear.bias)

    return forward
