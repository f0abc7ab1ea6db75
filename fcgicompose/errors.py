"""Typed errors: every user-facing problem is a value carrying where it happened."""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs


@attrs.frozen
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    message: str
    file: str = ""
    line: int = 0
    column: int = 0
    key: str = ""
    hint: str = ""

    def __str__(self) -> str:
        where = self.file
        if where and self.line:
            where += f":{self.line}:{self.column}" if self.column else f":{self.line}"
        parts = [p for p in (where, self.key) if p]
        text = ": ".join([*parts, self.message])
        text = f"{text} (hint: {self.hint})" if self.hint else text
        # One problem, one line: a file name or value with a line break must not split it.
        return _LINE_BREAKS.sub(lambda m: repr(m.group(0))[1:-1], text)


_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


class FcgiComposeError(Exception):
    """Base of everything the CLI reports as a user error (exit 1, no traceback)."""

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SpecError(FcgiComposeError):
    """The spec file is unreadable, not TOML, or not a valid spec."""


class StateError(FcgiComposeError):
    """What is installed conflicts with what the tool may do (foreign file, drift, stale plan)."""


class ApplyError(FcgiComposeError):
    """A runtime step of apply failed (the host was rolled back where possible)."""


class LockError(FcgiComposeError):
    """Another fcgicompose holds the lock on this root."""
