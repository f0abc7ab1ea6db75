"""The pipeline wired together: spec -> graph -> facts -> plan (and apply)."""

from __future__ import annotations

import os
from pathlib import Path

from fcgicompose import __version__
from fcgicompose.graph import Kind, build_graph, ordered
from fcgicompose.plan import Change, FileChange, Plan, make_plan
from fcgicompose.spec import Spec
from fcgicompose.state import read_facts, read_record, sha256_text


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


def unchanged_plan(spec_text: str, root: Path) -> Plan | None:
    """ "No changes", decided without compiling, when that is certain; else None.

    Certain when the spec text and the fcgicompose version are those of the last apply (the
    same inputs render the same files) and every recorded file is still as written. This is
    what keeps a no-op plan near the cost of reading and hashing the installed files.
    """
    record, _ = read_record(root)
    if not record.spec_sha256 or record.tool_version != __version__:
        return None
    if sha256_text(spec_text) != record.spec_sha256:
        return None
    facts = read_facts(root, record.entries)
    if not all(entry.matches(facts[path]) for path, entry in record.entries.items()):
        return None  # drift: the full plan explains it
    files = tuple(
        FileChange(
            path=path,
            change=Change.KEEP,
            kind=Kind(entry.kind),
            reason="up to date",
            apps=entry.apps,
            worker=entry.worker,
            link_target=entry.link_target,
        )
        for path, entry in record.entries.items()
    )
    return Plan(
        spec=record.spec,
        root=str(root),
        live=is_live(root),
        files=files,
        actions=(),
        notes=(f"spec and fcgicompose unchanged since generation {record.generation}",),
        blockers=(),
        drift=(),
        generation=record.generation,
        spec_text=spec_text,
    )
