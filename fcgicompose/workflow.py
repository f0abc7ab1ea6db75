"""The pipeline wired together: spec -> graph -> facts -> plan (and apply)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fcgicompose import __version__
from fcgicompose.errors import Problem
from fcgicompose.graph import build_graph, ordered
from fcgicompose.plan import Change, FileChange, Plan, make_plan
from fcgicompose.spec import Spec, account_problems, load_spec
from fcgicompose.state import (
    all_as_recorded,
    read_accounts,
    read_facts,
    read_record,
    sha256_text,
)


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
        accounts=needed_accounts(spec),
    )


def needed_accounts(spec: Spec) -> tuple[str, ...]:
    """The users and groups the generated units name, as "user:NAME" and "group:NAME"."""
    needed = {f"group:{spec.nginx.socket_group}"}
    for app in spec.apps.values():
        needed.add(f"user:{app.user}")
        if app.group:
            needed.add(f"group:{app.group}")
    return tuple(sorted(needed))


def unchanged_plan(spec_text: str, spec_name: str, root: Path) -> Plan | None:
    """ "No changes", decided without compiling, when that is certain; else None.

    Certain when the spec (text and file name, which the headers quote) and the fcgicompose
    version are those of the last apply — the same inputs render the same files — every
    recorded file is still as written, and the accounts the units name still exist. This is
    what keeps a no-op plan near the cost of reading and hashing the installed files.
    """
    record, _ = read_record(root)
    if not record.spec_sha256 or record.tool_version != __version__ or record.spec != spec_name:
        return None
    if sha256_text(spec_text) != record.spec_sha256 or not record.paths_intact:
        return None
    accounts = read_accounts(root)
    if accounts is not None:
        users, groups = accounts
        for needed in record.accounts:
            kind, _, name = needed.partition(":")
            if name not in (users if kind == "user" else groups):
                return None  # the full plan names what is missing
    if not all_as_recorded(root, record.entries):
        return None  # drift: the full plan explains it
    files = tuple(
        FileChange(
            path=path,
            change=Change.KEEP,
            kind=entry.kind,
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
        accounts=record.accounts,
    )


def plan_spec_file(
    spec_path: Path,
    display_name: str,
    root: Path,
    *,
    loaded: Spec | None = None,
    quick: bool = True,
    timings: dict[str, float] | None = None,
) -> tuple[Plan, list[Problem]]:
    """What `plan` does: the plan of a spec file against `root`, and the accounts it names that
    the root lacks (a warning for plan, an error for apply). `timings` gets the seconds spent
    loading the spec ("load") and planning ("plan_for"), for the benchmarks."""
    started = time.perf_counter()
    if loaded is None and quick:
        try:
            text = spec_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None  # load_spec reports it properly
        fast = unchanged_plan(text, spec_path.name, root) if text is not None else None
        if fast is not None:
            if timings is not None:
                timings.update(load=0.0, plan_for=time.perf_counter() - started)
            return fast, []
    spec = loaded or load_spec(spec_path, display_name)
    loaded_at = time.perf_counter()
    accounts = read_accounts(root)
    problems = account_problems(spec, *accounts) if accounts is not None else []
    plan = plan_for(spec, root)
    if timings is not None:
        timings.update(load=loaded_at - started, plan_for=time.perf_counter() - loaded_at)
    return plan, problems
