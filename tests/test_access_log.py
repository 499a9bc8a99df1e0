"""The access log's handler: lines batched into one write, the same line format as before, and
nothing lost when the router stops."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest

from nexussched.router import access_log as al

STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} access (rid=\S+)$")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def handler():
    """The command line's set-up on a stream of our own; the logger restored afterwards."""
    lg = al.log
    saved = (lg.handlers[:], lg.level, lg.propagate)
    lg.handlers = []
    stream = CountingStream()
    h = al.use_access_handler(stream)
    try:
        yield h, stream
    finally:
        lg.handlers, lg.level, lg.propagate = saved[0], saved[1], saved[2]


async def test_lines_on_a_loop_go_out_together_after_a_short_wait(handler):
    h, stream = handler
    for i in range(3):
        al.write_access(f"rid=r{i}")
    assert stream.writes == 0  # waiting for the batch
    await asyncio.sleep(al.FLUSH_EVERY * 4)
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1 and [STAMPED.fullmatch(x).group(1) for x in lines] == [
        "rid=r0",
        "rid=r1",
        "rid=r2",
    ]


async def test_a_full_batch_is_written_at_once_and_the_rest_on_flush(handler):
    h, stream = handler
    for i in range(al.FLUSH_LINES + 2):
        al.write_access(f"rid=r{i}")
    assert len(stream.getvalue().splitlines()) == al.FLUSH_LINES
    al.flush_access()  # the router's cleanup
    assert len(stream.getvalue().splitlines()) == al.FLUSH_LINES + 2


def test_without_a_loop_each_line_is_written_at_once(handler):
    h, stream = handler
    al.write_access("rid=alone")
    assert STAMPED.fullmatch(stream.getvalue().strip()).group(1) == "rid=alone"


def test_other_handlers_get_ordinary_records(handler, caplog):
    h, stream = handler
    al.log.propagate = True  # e.g. a test's caplog, or an application's own logging set-up
    with caplog.at_level(logging.INFO, logger="nexussched.access"):
        al.write_access("rid=seen")
    assert "rid=seen" in caplog.messages
    assert "rid=seen" in stream.getvalue()  # the handler took it as a record (no loop: at once)
