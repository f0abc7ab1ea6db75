"""How a spec setting is declared: once, with its help, default and constraints.

The loader (spec.py), the JSON schema (schema.py) and the docs all read these declarations, so a
setting cannot be accepted by one and unknown to another.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any

import attrs

# A check returns None when the value is fine, else (message, hint).
Check = Callable[[Any], "tuple[str, str] | None"]


@attrs.frozen
class Rule:
    """Constraints of one setting beyond its Python type."""

    help: str
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None  # regular expression the whole string must match
    pattern_hint: str = ""  # said when the pattern does not match
    checks: tuple[Check, ...] = ()
    inheritable: bool = False  # may be given in [defaults]
    example: Any = None
    required: bool = False
    empty_is_unset: bool = False  # "" is the default: it means "not set", not a value


def setting(help: str, default: Any = attrs.NOTHING, **rule: Any) -> Any:
    """Declare a spec setting as an attrs field carrying its Rule."""
    required = default is attrs.NOTHING
    if isinstance(default, (dict, list)):
        raise TypeError("use an immutable default")  # a frozen model must not share one
    rule["empty_is_unset"] = default == ""
    return attrs.field(
        default=default, metadata={"rule": Rule(help=help, required=required, **rule)}
    )


def rule_of(field: attrs.Attribute[Any]) -> Rule | None:
    """The Rule of a declared setting, or None for internal fields."""
    return field.metadata.get("rule")


def matches(pattern: str, value: str) -> bool:
    """Whether the whole `value` matches `pattern`."""
    return re.fullmatch(pattern, value) is not None


# Enums whose values are the strings written in the spec.
StrEnum = enum.StrEnum
