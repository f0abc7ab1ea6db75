"""The JSON schema and the settings reference, generated from the models' declarations.

`python -m fcgicompose.schema --write` refreshes schemas/ and docs/spec.md; a test checks that
the committed files equal what this module generates, so they cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from fcgicompose.settings import StrEnum, rule_of
from fcgicompose.spec import SPEC_VERSION, App, Nginx, Route, settings_of

SCHEMA_ID = "https://fcgicompose.example.org/schemas/fcgicompose.schema.json"


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [t for t in typing.get_args(tp) if t is not type(None)]
    return tp


def _scalar_schema(tp: Any, rule: Any) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        schema: dict[str, Any] = {"type": "integer"}
        if rule.minimum is not None:
            schema["minimum"] = rule.minimum
        if rule.maximum is not None:
            schema["maximum"] = rule.maximum
        return schema
    if tp is str:
        schema = {"type": "string"}
        if rule.pattern:
            schema["pattern"] = f"^(?:{rule.pattern})$"
        return schema
    raise TypeError(f"no schema for {tp!r}")


def _field_schema(cls: type[Any], field: attrs.Attribute[Any]) -> dict[str, Any]:
    rule = rule_of(field)
    assert rule is not None
    tp = _unwrap_optional(typing.get_type_hints(cls)[field.name])
    origin = typing.get_origin(tp)
    if attrs.has(tp):
        schema = model_schema(tp)
    elif origin is tuple:
        item = _scalar_schema(typing.get_args(tp)[0], rule)
        schema = {"type": "array", "items": item}
        if field.name in ("server_name", "listen", "command"):
            schema["minItems"] = 1
    elif origin in (Mapping, dict):
        schema = {
            "type": "object",
            "propertyNames": {"pattern": f"^(?:{rule.pattern})$"} if rule.pattern else {},
            "additionalProperties": {"type": "string"},
        }
    else:
        schema = _scalar_schema(tp, rule)
    schema = {"description": rule.help, **schema}
    default = field.default
    if default is not attrs.NOTHING and default is not None:
        if isinstance(default, StrEnum):
            default = default.value
        elif isinstance(default, tuple):
            default = list(default)
        elif isinstance(default, Mapping):
            default = dict(default)
        if default != "":
            schema["default"] = default
    return schema


def model_schema(cls: type[Any], only_inheritable: bool = False) -> dict[str, Any]:
    fields = [
        f
        for f in settings_of(cls)
        if not only_inheritable or rule_of(f).inheritable  # type: ignore[union-attr]
    ]
    required = [f.name for f in fields if rule_of(f).required and not only_inheritable]  # type: ignore[union-attr]
    schema: dict[str, Any] = {
        "type": "object",
        "description": (cls.__doc__ or "").strip(),
        "properties": {f.name: _field_schema(cls, f) for f in fields},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def spec_schema() -> dict[str, Any]:
    """The draft-07 schema of a whole spec file."""
    app = model_schema(App)
    app["properties"]["user"]["description"] += " Required here or in [defaults]."
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "fcgicompose spec",
        "description": "FastCGI apps run as socket-activated systemd workers behind nginx.",
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {
            "version": {"description": "Spec format version.", "const": SPEC_VERSION},
            "defaults": {
                **model_schema(App, only_inheritable=True),
                "description": "Settings every app inherits unless it sets them itself.",
            },
            "nginx": model_schema(Nginx),
            "apps": {
                "type": "object",
                "description": "The apps, by name (used in unit and upstream names).",
                "propertyNames": {"pattern": "^[a-z][a-z0-9_-]{0,47}$"},
                "additionalProperties": app,
            },
        },
    }


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2) + "\n"


def _type_name(cls: type[Any], field: attrs.Attribute[Any]) -> str:
    tp = _unwrap_optional(typing.get_type_hints(cls)[field.name])
    origin = typing.get_origin(tp)
    if attrs.has(tp):
        return "table"
    if origin is tuple:
        return f"array of {_scalar_name(typing.get_args(tp)[0])}"
    if origin in (Mapping, dict):
        return "table of strings"
    return _scalar_name(tp)


def _scalar_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return " \\| ".join(f'`"{m.value}"`' for m in tp)
    return {bool: "boolean", int: "integer", str: "string"}[tp]


def _default_text(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if default is None or default == "" or default == {}:
        return "—"
    if isinstance(default, StrEnum):
        return f'`"{default.value}"`'
    if isinstance(default, tuple):
        return "`" + json.dumps(list(default)) + "`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{json.dumps(default)}`"


def settings_table(cls: type[Any], prefix: str) -> str:
    rows = ["| key | type | default | in [defaults] | meaning |", "|---|---|---|---|---|"]
    for field in settings_of(cls):
        rule = rule_of(field)
        assert rule is not None
        inherit = "yes" if rule.inheritable else ""
        meaning = rule.help.replace("|", "\\|")
        rows.append(
            f"| `{prefix}{field.name}` | {_type_name(cls, field)} | {_default_text(field)} "
            f"| {inherit} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


REFERENCE_START = "<!-- settings reference: generated by `make schema`, do not edit below -->"


def reference_text() -> str:
    return "\n".join(
        [
            REFERENCE_START,
            "",
            "### `[nginx]`",
            "",
            settings_table(Nginx, "nginx."),
            "### `[apps.NAME]`",
            "",
            settings_table(App, ""),
            "### `[apps.NAME.route]`",
            "",
            settings_table(Route, "route."),
        ]
    )


def write(project: Path) -> None:
    (project / "schemas" / "fcgicompose.schema.json").write_text(schema_text())
    doc = project / "docs" / "spec.md"
    text = doc.read_text() if doc.exists() else ""
    head = text.split(REFERENCE_START)[0]
    doc.write_text(head + reference_text())


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write(Path(__file__).resolve().parent.parent)
    else:
        sys.stdout.write(schema_text())
