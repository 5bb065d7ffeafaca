"""oneDNN-packed linear layers compute what the plain ones do, for decode-sized and prefill-sized
inputs, with and without bias, and a model that cannot be packed is left as it was."""

from __future__ import annotations

import pytest
import torch

from serving_svc.engines.packed_linear import PACKED_UP_TO_ROWS, pack_linear_weights

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


def _model(dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.SiLU(), torch.nn.Linear(96, 40, bias=False)).to(dtype)


@pytest.mark.parametrize("shape", [(1, 48), (7, 1, 48), (32, 1, 48), (3, 90, 48), (PACKED_UP_TO_ROWS + 1, 48)])
def test_packed_layers_compute_what_the_plain_ones_do(shape: tuple[int, ...]) -> None:
    model = _model()
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = model(x)
        assert pack_linear_weights(model, expected_rows=32) == 2
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_packed_layers_keep_their_forward_hooks() -> None:
    """Stacked LoRA adds its deltas in forward hooks on the linear layers."""
    model = _model()
    pack_linear_weights(model, expected_rows=8)
    seen: list[torch.Size] = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.inference_mode():
        model(torch.randn(4, 1, 48))
    assert seen == [torch.Size([4, 1, 96])]


def test_a_dtype_onednn_does_not_pack_is_left_as_it_was() -> None:
    model = _model(torch.float16)
    assert pack_linear_weights(model, expected_rows=32) == 0
    assert all("forward" not in vars(module) for module in model)
