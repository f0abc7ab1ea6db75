"""Data-driven plan cases: a spec applied, maybe hand edits, a new spec planned.

Each case file in plan_cases/ holds `before` (applied first into an empty root; empty for a
fresh host), `after` (planned), optional `hand_edits` and `delete_record`, and `expected`: one
line per file change ("SYMBOL PATH"), per runtime action ("action KIND UNITS..."), per note,
drift or blocker.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from fcgicompose.apply import apply_plan
from fcgicompose.plan import Plan
from fcgicompose.spec import parse_spec
from fcgicompose.workflow import plan_for

CASES = sorted((Path(__file__).parent / "plan_cases").glob("*.toml"))
UPDATE = os.environ.get("FCGICOMPOSE_UPDATE_GOLDEN") == "1"


def summary(plan: Plan) -> str:
    lines = [f"{c.change.symbol} {c.path}" for c in plan.changes]
    lines += [f"action {a.kind} {' '.join(a.units)}".rstrip() for a in plan.actions]
    lines += [f"note {n}" for n in plan.notes]
    lines += [f"drift {p.file}" for p in plan.drift]
    lines += [f"blocked {p.file}" for p in plan.blockers]
    return "".join(line + "\n" for line in lines)


def run_case(case: dict[str, object], root: Path) -> Plan:
    before = str(case["before"])
    if before.strip():
        first = plan_for(parse_spec(before, "spec.toml"), root)
        apply_plan(first, root)
    for edit in case.get("hand_edits", []):  # type: ignore[attr-defined]
        target = root / edit["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(edit["content"])
    if case.get("delete_record"):
        (root / "var/lib/fcgicompose/state.json").unlink()
    return plan_for(parse_spec(str(case["after"]), "spec.toml"), root)


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_plan_case(case_file: Path, tmp_path: Path) -> None:
    case = tomllib.loads(case_file.read_text())
    plan = run_case(case, tmp_path)
    got = summary(plan)
    if UPDATE:
        text = case_file.read_text()
        head = text[: text.index("expected = '''")]
        case_file.write_text(head + "expected = '''\n" + got + "'''\n")
    assert got == case["expected"], case["description"]
