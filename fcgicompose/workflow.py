"""The pipeline wired together: spec -> graph -> facts -> plan (and apply)."""

from __future__ import annotations

import os
from pathlib import Path

from fcgicompose.graph import build_graph, ordered
from fcgicompose.plan import Plan, make_plan
from fcgicompose.spec import Spec
from fcgicompose.state import read_facts, read_record


def is_live(root: Path) -> bool:
    """Whether `root` is this host's own /, where runtime actions run."""
    return os.path.realpath(root) == "/"


def plan_for(spec: Spec, root: Path) -> Plan:
    """Read what is installed under `root` and plan the way to `spec`."""
    desired = list(ordered(build_graph(spec)))
    record, _ = read_record(root)
    facts = read_facts(root, [a.path for a in desired] + list(record.entries))
    return make_plan(
        spec=spec.source,
        root=str(root),
        live=is_live(root),
        desired=desired,
        facts=facts,
        record=record,
        spec_text=spec.text,
    )
