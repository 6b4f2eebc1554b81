"""Items of a task that reads its own layout (videos, UI screens, VL-ICL's query/support files)
in the shape the runner asks of a reader (:class:`~mm15.eval.readers.ItemReader`): the files
read, a row count for the progress bar, rows filtered out, and the items in order, the first
``limit`` of them.

A task's ``TaskSpec.reader`` is a function ``(spec, data, *, split, limit) -> ItemStream``; the
runner calls it where it would build an ``ItemReader``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mm15.eval.task_spec import EvalItem


class ItemStream:
    """``make()`` yields the items (error items included); ``count`` is how many rows the
    files hold, before ``limit``."""

    def __init__(
        self,
        files: list[Path],
        count: int,
        make: Callable[[], Iterable[EvalItem]],
        *,
        limit: int | None = None,
    ) -> None:
        self.files, self.filtered = files, 0
        self._count, self._make, self.limit = count, make, limit

    def row_count(self) -> int:
        return self._count if self.limit is None else min(self._count, self.limit)

    def __iter__(self) -> Iterator[EvalItem]:
        for done, item in enumerate(self._make()):
            if self.limit is not None and done >= self.limit:
                return
            yield item
