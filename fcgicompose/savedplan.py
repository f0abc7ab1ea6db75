"""Saved plans: `plan --out FILE` writes one, `apply FILE` carries out exactly that plan.

The file records a fingerprint of everything the plan read — each path it would touch (even
absent ones), the tool's record and the spec — so apply can refuse a plan the world has moved
away from, including one made against an empty host (Terraform's hole: #24078). The file holds
the spec and the rendered files in clear, environment values included: treat it as a secret.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs

from fcgicompose.errors import Problem, StateError
from fcgicompose.graph import Kind
from fcgicompose.plan import Action, ActionKind, Change, FileChange, Plan
from fcgicompose.state import FileFact, read_fact, read_record

FORMAT = 1
MAGIC = "fcgicompose-plan"


def fingerprint(fact: FileFact) -> str:
    if not fact.exists:
        return "absent"
    if fact.is_link:
        return f"link:{fact.link_target}"
    if fact.is_other:
        return "other"
    return f"file:{fact.sha256}"


def _inputs(plan: Plan, root: Path, spec_path: Path) -> dict[str, Any]:
    _, record_sha = read_record(root)
    return {
        "spec_path": str(spec_path.resolve()),
        "spec_sha256": hashlib.sha256(spec_path.read_bytes()).hexdigest(),
        "record_sha256": record_sha,
        "files": {f.path: fingerprint(read_fact(root, f.path)) for f in plan.files},
    }


def dumps(plan: Plan, root: Path, spec_path: Path) -> str:
    """The saved-plan file for `plan`, made against `root` from `spec_path`."""
    data = {
        "format": MAGIC,
        "version": FORMAT,
        "inputs": _inputs(plan, root, spec_path),
        "plan": {
            **{k: v for k, v in attrs.asdict(plan, recurse=False).items() if k not in (
                "files", "actions", "blockers", "drift", "notes")},
            "files": [_change_json(f) for f in plan.files],
            "actions": [{"kind": str(a.kind), "units": list(a.units), "reason": a.reason}
                        for a in plan.actions],
            "notes": list(plan.notes),
            "blockers": [attrs.asdict(p) for p in plan.blockers],
            "drift": [attrs.asdict(p) for p in plan.drift],
        },
    }  # fmt: skip
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _change_json(change: FileChange) -> dict[str, Any]:
    data = attrs.asdict(change, recurse=False)
    data["change"], data["kind"], data["apps"] = (
        str(change.change),
        str(change.kind),
        list(change.apps),
    )
    return data


def is_saved_plan(path: Path) -> bool:
    """A JSON object naming our format; a TOML spec can never start with "{"."""
    try:
        with path.open("rb") as handle:
            head = handle.read(200)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and MAGIC.encode() in head


def loads(text: str, file: str) -> tuple[Plan, dict[str, Any]]:
    """The plan in a saved-plan file and the inputs it was made from."""
    try:
        data = json.loads(text)
        if data.get("format") != MAGIC or data.get("version") != FORMAT:
            raise ValueError(f"not a version {FORMAT} fcgicompose plan")
        raw = data["plan"]
        from fcgicompose.errors import Problem as P

        plan = Plan(
            spec=raw["spec"],
            root=raw["root"],
            live=raw["live"],
            files=tuple(
                FileChange(**{**f, "change": Change(f["change"]), "kind": Kind(f["kind"]),
                              "apps": tuple(f["apps"])})
                for f in raw["files"]
            ),
            actions=tuple(Action(ActionKind(a["kind"]), tuple(a["units"]), a["reason"])
                          for a in raw["actions"]),
            notes=tuple(raw["notes"]),
            blockers=tuple(P(**p) for p in raw["blockers"]),
            drift=tuple(P(**p) for p in raw["drift"]),
            generation=raw["generation"],
            spec_text=raw["spec_text"],
            accounts=tuple(raw["accounts"]),
        )  # fmt: skip
        return plan, data["inputs"]
    except (ValueError, KeyError, TypeError) as error:
        raise StateError([Problem(f"unreadable saved plan: {error}", file=file)]) from None


def check_fresh(plan: Plan, inputs: dict[str, Any], root: Path, file: str) -> None:
    """Refuse, naming what moved, if anything the plan read is no longer as it was."""
    moved = []
    if str(root) != plan.root:
        moved.append(f"the plan was made for root {plan.root}, not {root}")
    spec_path = Path(inputs["spec_path"])
    try:
        spec_sha = hashlib.sha256(spec_path.read_bytes()).hexdigest()
    except OSError:
        spec_sha = ""
    if spec_sha != inputs["spec_sha256"]:
        moved.append(f"the spec {spec_path} changed")
    if read_record(root)[1] != inputs["record_sha256"]:
        moved.append("fcgicompose's record changed (another apply ran)")
    for path, was in sorted(inputs["files"].items()):
        now = fingerprint(read_fact(root, path))
        if now != was:
            moved.append(f"{path} changed ({was} → {now})")
    if moved:
        raise StateError(
            [Problem(f"stale plan: {what}", file=file, hint="make a new plan") for what in moved]
        )
