"""The JSON schema and the settings reference are generated from the models and kept in sync."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from fcgicompose import schema
from tests.conftest import PROJECT, SAMPLES

SCHEMA_FILE = PROJECT / "schemas" / "fcgicompose.schema.json"
GOLDEN_SPECS = sorted((PROJECT / "tests" / "golden_specs").glob("*.toml"))


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == schema.schema_text(), "run `make schema`"


def test_docs_reference_is_the_generated_one() -> None:
    doc = (PROJECT / "docs" / "spec.md").read_text()
    assert doc.endswith(schema.reference_text()), "run `make schema`"


def test_schema_is_valid_draft7() -> None:
    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("spec", SAMPLES + GOLDEN_SPECS, ids=lambda p: p.name)
def test_valid_specs_pass_the_schema_and_point_to_it(spec: Path) -> None:
    jsonschema.validate(tomllib.loads(spec.read_text()), json.loads(SCHEMA_FILE.read_text()))
    first_line = spec.read_text().splitlines()[0]
    assert first_line.startswith("#:schema ") and first_line.endswith(
        "schemas/fcgicompose.schema.json"
    )
    assert (spec.parent / first_line.split()[1]).resolve() == SCHEMA_FILE


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 1, "apps": {"a": {"command": ["/a"], "workers": 0}}},
        {"version": 1, "apps": {"a": {"command": ["/a"], "wokers": 2}}},
        {"version": 1, "apps": {"a": {"command": ["/a"], "activation": "inetd"}}},
        {"version": 1, "apps": {"a": {"command": ["/a"], "socket_mode": "rw"}}},
        {"version": 1, "apps": {"a": {"command": ["/a"], "route": {"listen": [0]}}}},
        {"version": 1, "defaults": {"workers": 2}},
        {"version": 2},
        {"apps": {}},
    ],
)
def test_schema_rejects_what_the_loader_rejects(bad: dict[str, object]) -> None:
    from fcgicompose.errors import SpecError
    from fcgicompose.spec import parse_spec

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(SCHEMA_FILE.read_text()))
    with pytest.raises(SpecError):
        parse_spec(_to_toml(bad), "bad.toml")


def _to_toml(data: dict[str, object]) -> str:
    import tomlkit

    return tomlkit.dumps(data)
