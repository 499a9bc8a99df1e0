"""The one error type every trace loader raises for malformed content."""

from __future__ import annotations

from os import PathLike


def _clip(text: str, limit: int = 60) -> str:
    """Keep messages on one line and short, whatever the offending value holds."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TraceError(ValueError):
    """A trace file is malformed; the message names file, 1-based line and field on one line.

    >>> str(TraceError("/x/y.csv", 17, "ContextTokens", "expected a non-negative integer, got 'abc'"))
    "bad trace file /x/y.csv, line 17, field 'ContextTokens': expected a non-negative integer, got 'abc'"
    """

    def __init__(
        self, path: str | PathLike[str], line: int, field: str | None, reason: str
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = _clip(reason, 200)
        where = f"bad trace file {self.path}, line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {self.reason}")

    def __reduce__(self):  # keeps the error picklable across process pools
        return (type(self), (self.path, self.line, self.field, self.reason))

    @staticmethod
    def got(value: object) -> str:
        """Render an offending value for a message: quoted, single-line, truncated."""
        return repr(_clip(str(value), 40))
