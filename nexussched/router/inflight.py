"""Which tasks are running requests on which backend, so that a backend leaving rotation stops
them at once instead of leaving its clients to wait for a timeout.

A task registers around its upstream work (`running(idx)`); `stop(idx, why)` cancels every task
registered on that backend and remembers why. The task, catching the CancelledError, asks
`stopped(task)`: a reason means "your backend left rotation" (retry elsewhere if nothing was sent
yet, else end with an error), None means a real cancellation (client gone, shutdown) to re-raise.
"""

from __future__ import annotations

import asyncio
import sys

if sys.version_info < (3, 12):  # asyncio.current_task is Python there: read its dict (C)
    from asyncio.tasks import _current_tasks

    current_task_of = _current_tasks.get  # loop -> its running task (or None)
else:
    current_task_of = asyncio.current_task


class _Running:
    """`with runs.running(idx):` (a class, not a generator context manager: it is on every
    request's path twice)."""

    __slots__ = ("_on", "_task", "_loop")

    def __init__(self, on: dict[asyncio.Task, int], loop: asyncio.AbstractEventLoop | None) -> None:
        self._on = on
        self._task: asyncio.Task | None = None
        self._loop = loop

    def __enter__(self) -> None:
        loop = self._loop
        task = self._task = current_task_of(loop) if loop is not None else asyncio.current_task()
        if task is not None:
            on = self._on
            on[task] = on.get(task, 0) + 1  # a task may register again inside (nested calls)

    def __exit__(self, *exc: object) -> None:
        task = self._task
        if task is not None:
            on = self._on
            if on[task] <= 1:
                del on[task]
            else:
                on[task] -= 1


class BackendRuns:
    def __init__(self) -> None:
        self._on: dict[int, dict[asyncio.Task, int]] = {}  # idx -> task -> nesting depth
        self._why: dict[asyncio.Task, str] = {}
        # the serving loop, once known: current_task(loop) spares asyncio.get_running_loop(),
        # a getpid() system call on Python 3.11
        self.loop: asyncio.AbstractEventLoop | None = None

    def running(self, idx: int) -> _Running:
        on = self._on.get(idx)
        if on is None:
            on = self._on[idx] = {}
        return _Running(on, self.loop)

    def stop(self, idx: int, why: str) -> int:
        """Cancel every task running on backend idx; returns how many."""
        tasks = list(self._on.get(idx, ()))
        for t in tasks:
            if not t.done() and t not in self._why:
                self._why[t] = why
                t.cancel()
        return len(tasks)

    def stopped(self, task: asyncio.Task | None = None) -> str | None:
        """Why `task` (default: the current one) was stopped by stop(); None if it was not. A
        stopped task is uncancelled here, so it may go on to answer its client."""
        task = task or asyncio.current_task(self.loop)
        if task is None:
            return None
        why = self._why.pop(task, None)
        if why is not None:
            task.uncancel()
        return why

    def count(self, idx: int) -> int:
        return len(self._on.get(idx, ()))
