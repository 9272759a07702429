"""A loaded table's image ids in row order, and the id → row lookup, without a Python object per id.

A list of 377,000 ids and a dict of them held ~70 MB at 44-character UIDs (a str object, a dict
slot and an int each). Here the ids are the Arrow column the hit metadata already holds, and the
lookup is a binary search over one sorted fixed-width bytes copy (the longest id's length a row:
17 MB at 377,000 UIDs) and its row numbers (4 bytes a row).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Ids turned into bytes per step while sorting: bounds the Python objects alive at once.
_CHUNK = 65_536


class ImageIds(Sequence):
    """The ids of rows 0..n-1 (`ids[row]`, iteration, `len`) and `row_of`, a read-only mapping id → row."""

    def __init__(self, column: pa.Array | pa.ChunkedArray):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        self._column = column.cast(pa.string())
        keys = _fixed_width(self._column)
        order = np.argsort(keys, kind="stable")
        self._sorted = keys[order]
        self._rows = order.astype(np.int32 if len(order) < 2**31 else np.int64)
        self.row_of: Mapping[str, int] = _RowOf(self)

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return self._column[row].to_pylist()
        return self._column[row].as_py()

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._column), _CHUNK):
            yield from self._column.slice(start, _CHUNK).to_pylist()

    def row(self, image_id: str) -> int | None:
        """The row holding `image_id`, or None."""
        key = image_id.encode()
        if len(key) > self._sorted.itemsize or not self._sorted.size:
            return None
        first, last = np.searchsorted(self._sorted, key, side="left"), np.searchsorted(self._sorted, key, side="right")
        # numpy drops trailing NUL bytes of a fixed-width value ("x" and "x\0" sort as equals): the
        # column itself has the last word.
        for at in range(int(first), int(last)):
            row = int(self._rows[at])
            if self._column[row].as_py() == image_id:
                return row
        return None


class _RowOf(Mapping):
    """`ids.row_of`: `row_of[image_id]`, `.get`, `in`, as the dict it replaces."""

    def __init__(self, ids: ImageIds):
        self._ids = ids

    def __getitem__(self, image_id: str) -> int:
        row = self._ids.row(image_id) if isinstance(image_id, str) else None
        if row is None:
            raise KeyError(image_id)
        return row

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)


def _fixed_width(column: pa.Array) -> np.ndarray:
    """The ids as a numpy `S<longest>` array, converted a chunk at a time."""
    if not len(column):
        return np.empty(0, dtype="S1")
    binary = column.cast(pa.binary())
    width = max(1, pc.max(pc.binary_length(binary)).as_py() or 0)
    keys = np.empty(len(column), dtype=f"S{width}")
    for start in range(0, len(column), _CHUNK):
        part = binary.slice(start, _CHUNK)
        keys[start:start + len(part)] = part.to_numpy(zero_copy_only=False)
    return keys
