"""A key/value cache whose rows and columns change in place, for a batch that rows join and leave.

transformers' `DynamicLayer` appends a decode step's column with `torch.cat`, a copy of the whole
cache every layer and step (a share of a decode step on a CPU that grows with the context), and
dropping or adding a row copies it all again. Here each layer keeps its keys and values in buffers with
spare columns, and the cache the model sees is a window onto them:

- a decode step writes its column into the spare room after the window (a copy only when the
  room runs out, and then with as much again to spare);
- a finished row stays where it is and a joining row is written over it (`DecodeBatch` keeps the
  rows' places), so a change of rows copies just the joining rows' keys and values;
- leading columns that no row needs any more leave the window without a copy.

The buffers start as zeros and only ever hold finite keys and values, so a column a row's mask
hides (left padding, a previous row's keys) adds nothing to attention: weight 0 times a finite value.
"""

from __future__ import annotations

from typing import Any

import torch

from serving_svc.engines.compat import CacheLayer, LayeredCache

_SPARE_COLUMNS = 64
"""Room a buffer is given past what it holds when it has to be reallocated: 64 decode steps without a copy."""


class WindowLayer(CacheLayer):
    """One layer's keys and values ([rows, heads, columns, dim]): `keys` and `values` are views of
    columns [start, end) of buffers that have room before and after them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer = torch.zeros(0)
        self._value_buffer = torch.zeros(0)
        self._start = self._end = 0

    def start(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Empty buffers of the states' rows, heads and dims: the first `append` sizes them."""
        rows, heads, _, dim = key_states.shape
        self._key_buffer = key_states.new_zeros((rows, heads, 0, dim))
        self._value_buffer = value_states.new_zeros((rows, heads, 0, value_states.shape[-1]))
        self._start = self._end = 0

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Append columns to every row (the model's call, every layer and step)."""
        new = key_states.shape[-2]
        if self._end + new > self._key_buffer.shape[2]:
            self._relayout(rows=self.rows, left=0, right=new + _SPARE_COLUMNS)
        self._key_buffer[:, :, self._end : self._end + new] = key_states
        self._value_buffer[:, :, self._end : self._end + new] = value_states
        self._end += new
        self._publish()

    def get_seq_length(self) -> int:
        return self._end - self._start

    @property
    def rows(self) -> int:
        return int(self._key_buffer.shape[0])

    def write_rows(self, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put `keys` and `values` ([len(rows), heads, columns, dim]) into `rows`, right-aligned with
        the window; the window first grows to the left if they are longer, and the buffers grow by
        rows if `rows` names rows past the last."""
        columns = keys.shape[2]
        needed_rows = max(self.rows, int(rows.max()) + 1)
        missing_left = max(0, columns - self.get_seq_length())
        if needed_rows > self.rows or missing_left > self._start:
            self._relayout(rows=needed_rows, left=missing_left, right=_SPARE_COLUMNS)
        else:
            self._start -= missing_left
        self._key_buffer[rows, :, self._end - columns : self._end] = keys
        self._value_buffer[rows, :, self._end - columns : self._end] = values
        self._publish()

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows`, in that order (one copy of their window)."""
        self._relayout(rows=len(rows), left=0, right=_SPARE_COLUMNS, row_index=rows)

    def drop_leading(self, columns: int) -> None:
        """The window's first `columns` columns are no longer needed by any row."""
        self._start += columns
        self._publish()

    def _relayout(self, rows: int, left: int, right: int, row_index: torch.Tensor | None = None) -> None:
        """Copy the window into new buffers of `rows` rows (those of `row_index`, or the first ones),
        with `left` more columns before it and `right` spare ones after it."""
        length = self.get_seq_length()
        keys = self._key_buffer[:, :, self._start : self._end]
        values = self._value_buffer[:, :, self._start : self._end]
        if row_index is not None:
            keys, values = keys[row_index], values[row_index]
        kept = min(rows, keys.shape[0])
        shape = (rows, keys.shape[1], left + length + right)
        self._key_buffer = keys.new_zeros((*shape, keys.shape[3]))
        self._value_buffer = values.new_zeros((*shape, values.shape[3]))
        self._key_buffer[:kept, :, left : left + length] = keys[:kept]
        self._value_buffer[:kept, :, left : left + length] = values[:kept]
        self._start, self._end = 0, left + length
        self._publish()

    def _publish(self) -> None:
        self.show(self._key_buffer[:, :, self._start : self._end], self._value_buffer[:, :, self._start : self._end])


class BatchCache(LayeredCache):
    """A cache of `WindowLayer`s, created as the model's layers first write to it."""

    def __init__(self) -> None:
        super().__init__(WindowLayer)

    @property
    def window_layers(self) -> list[WindowLayer]:
        return self.layers_of(WindowLayer)
