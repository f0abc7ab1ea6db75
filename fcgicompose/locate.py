"""Find the line and column of a key path in TOML source text.

tomlkit keeps formatting but not positions, so we scan the source ourselves. The scan is
deliberately simple (headers, `key =` lines, one level of inline tables); when a key cannot be
found we fall back to its nearest located parent, which is still a useful place to point at.
"""

from __future__ import annotations

import re

Position = tuple[int, int]

_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(rf"\s*({_DOTTED})\s*=\s*")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_DOTTED})\s*=\s*")
_PART = re.compile(_BARE_OR_QUOTED)


def split_key(dotted: str) -> tuple[str, ...]:
    """Split a TOML dotted key into its parts, unquoting quoted parts."""
    parts = []
    for match in _PART.finditer(dotted):
        part = match.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


class Locator:
    """Map key paths (tuples of keys) to (line, column) of their value, 1-based."""

    def __init__(self, source: str) -> None:
        self._positions: dict[tuple[str, ...], Position] = {}
        table: tuple[str, ...] = ()
        in_multiline = False
        for lineno, line in enumerate(source.splitlines(), start=1):
            if in_multiline:
                in_multiline = _toggles_multiline(line, in_multiline)
                continue
            header = _HEADER.match(line)
            if header:
                table = split_key(header.group(1))
                self._positions.setdefault(table, (lineno, header.start(1) + 1))
                continue
            assignment = _ASSIGNMENT.match(line)
            if not assignment:
                continue
            key = table + split_key(assignment.group(1))
            self._positions.setdefault(key, (lineno, assignment.end() + 1))
            rest = line[assignment.end() :]
            if rest.startswith("{"):
                for inner in _INLINE_KEY.finditer(rest):
                    inner_key = key + split_key(inner.group(1))
                    column = assignment.end() + inner.end() + 1
                    self._positions.setdefault(inner_key, (lineno, column))
            in_multiline = _toggles_multiline(rest, False)

    def find(self, key: tuple[str, ...]) -> Position:
        """Position of `key`, else of its closest located parent, else (0, 0)."""
        while key:
            if key in self._positions:
                return self._positions[key]
            key = key[:-1]
        return (0, 0)


def _toggles_multiline(text: str, inside: bool) -> bool:
    """Track whether we are inside a multi-line string after `text`."""
    for quote in ('"""', "'''"):
        if text.count(quote) % 2:
            return not inside
    return inside
