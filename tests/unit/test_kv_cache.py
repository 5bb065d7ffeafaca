"""The window cache holds what a cache of plain concatenated tensors would, through every change a
running batch makes: steps past the spare room, rows written over freed ones (shorter and longer
than the window), rows added after the last, rows kept, leading columns dropped."""

from __future__ import annotations

import torch

from serving_svc.engines.kv_cache import _SPARE_COLUMNS, BatchCache, WindowLayer

HEADS, DIM = 2, 4


def _states(rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, HEADS, columns, DIM), torch.randn(rows, HEADS, columns, DIM)


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    missing = columns - tensor.shape[2]
    return torch.cat([tensor.new_zeros((tensor.shape[0], HEADS, missing, DIM)), tensor], dim=2)


class Reference:
    """The same cache as plain tensors, changed the obvious (copying) way."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = torch.cat([self.keys, keys], 2), torch.cat([self.values, values], 2)

    def write_rows(self, rows: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        columns = max(self.keys.shape[2], keys.shape[2])
        grown = max(self.keys.shape[0], max(rows) + 1)
        for name, new in (("keys", keys), ("values", values)):
            old = _left_pad(getattr(self, name), columns)
            tensor = torch.zeros(grown, HEADS, columns, DIM)
            tensor[: old.shape[0]] = old
            tensor[rows] = _left_pad(new, columns)
            setattr(self, name, tensor)


def _assert_same_where_written(layer: WindowLayer, reference: Reference, rows: list[int], columns: int) -> None:
    """The last `columns` columns of `rows` are the same; what is left of them is masked padding."""
    assert layer.get_seq_length() == reference.keys.shape[2]
    assert layer.keys is not None and layer.values is not None
    torch.testing.assert_close(layer.keys[rows, :, -columns:], reference.keys[rows, :, -columns:])
    torch.testing.assert_close(layer.values[rows, :, -columns:], reference.values[rows, :, -columns:])
    assert torch.isfinite(layer.keys).all() and torch.isfinite(layer.values).all()


def test_the_window_cache_follows_a_running_batch() -> None:
    torch.manual_seed(0)
    layer = WindowLayer()
    reference = Reference(*_states(3, 0))
    prompt = _states(3, 5)
    layer.update(*prompt)
    reference.update(*prompt)
    for _ in range(_SPARE_COLUMNS + 3):  # past the spare room: one reallocation
        step = _states(3, 1)
        layer.update(*step)
        reference.update(*step)
    _assert_same_where_written(layer, reference, [0, 1, 2], layer.get_seq_length())

    joining = _states(1, 4)  # a short prompt in freed row 1
    layer.write_rows(torch.tensor([1]), *joining)
    reference.write_rows([1], *joining)
    _assert_same_where_written(layer, reference, [1], 4)
    _assert_same_where_written(layer, reference, [0, 2], layer.get_seq_length())

    layer.drop_leading(10)  # no row needs them: the window starts later, nothing is copied
    reference.keys, reference.values = reference.keys[:, :, 10:], reference.values[:, :, 10:]
    _assert_same_where_written(layer, reference, [0, 1, 2], 4)

    longer = _states(2, layer.get_seq_length() + 6)  # longer than the window, into row 2 and a new row 3
    layer.write_rows(torch.tensor([2, 3]), *longer)
    reference.write_rows([2, 3], *longer)
    _assert_same_where_written(layer, reference, [2, 3], longer[0].shape[2])
    _assert_same_where_written(layer, reference, [0, 1], 4)

    step = _states(4, 1)
    layer.update(*step)
    reference.update(*step)
    layer.keep_rows(torch.tensor([3, 0]))
    reference.keys, reference.values = reference.keys[[3, 0]], reference.values[[3, 0]]
    _assert_same_where_written(layer, reference, [0], longer[0].shape[2] + 1)
    _assert_same_where_written(layer, reference, [1], 5)


def test_the_batch_cache_makes_window_layers_as_the_model_writes() -> None:
    cache = BatchCache()
    keys, values = _states(2, 3)
    returned_keys, _ = cache.update(keys, values, layer_idx=0)
    cache.update(keys, values, layer_idx=1)
    assert len(cache.window_layers) == 2
    assert cache.get_seq_length(0) == 3
    torch.testing.assert_close(returned_keys, keys)
