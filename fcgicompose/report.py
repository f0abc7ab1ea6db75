"""Plan and outcome as text for people and JSON for machines. Pure: values in, strings out."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fcgicompose.apply import Outcome
from fcgicompose.plan import Change, Plan

Style = Callable[[str, str], str]  # (text, color name) -> text


def plain(text: str, color: str) -> str:
    return text


_COLOR_OF = {Change.CREATE: "green", Change.UPDATE: "yellow", Change.DELETE: "red"}


def plan_text(plan: Plan, style: Style = plain, verb: str = "would") -> str:
    """Terraform-style listing: drift and blockers first, files, runtime actions, summary."""
    out: list[str] = []
    target = "the live host /" if plan.live else f"root {plan.root}"
    out.append(
        f"fcgicompose plan of {plan.spec} against {target} (record generation {plan.generation})"
    )
    for problem in plan.blockers:
        out.append(style(f"✗ {problem}", "red"))
    for problem in plan.drift:
        out.append(style(f"! drift: {problem}", "magenta"))
    changes = plan.changes
    if changes:
        used = sorted({c.change for c in changes}, key=list(Change).index)
        legend = ", ".join(f"{c.symbol} {c.value}" for c in used)
        out += ["", f"Files ({legend}):"]
        for change in changes:
            color = _COLOR_OF.get(change.change, "")
            what = (
                f"→ {change.link_target}"
                if change.is_link and change.change is not Change.DELETE
                else ""
            )
            line = f"  {change.change.symbol} {change.path} {what}".rstrip()
            out.append(style(line, color) + f"  ({change.kind}: {change.reason})")
            if change.change is Change.UPDATE:
                out += ["      " + style(d, _diff_color(d)) for d in change.diff().splitlines()]
    if plan.actions:
        heading = "Runtime actions, in order" + (
            "" if plan.live else f" (skipped: {plan.root} is not the live root /)"
        )
        out += ["", heading + ":"]
        for number, action in enumerate(plan.actions, start=1):
            out.append(f"  {number}. {action.describe()}")
            out.append(style(f"       {action.reason}", "dim"))
    if plan.notes:
        out += ["", "No action needed:"] + [f"  {note}" for note in plan.notes]
    counts = plan.counts()
    out.append("")
    if plan.blockers:
        count = len(plan.blockers)
        out.append(
            style(
                f"Blocked: {count} path{'s' if count != 1 else ''} above must be "
                "cleared by hand first; nothing will be applied.",
                "red",
            )
        )
    elif not plan.has_changes:
        out.append(style("No changes. The installed files match the spec.", "green"))
    else:
        out.append(
            style(
                f"Plan: {counts[Change.CREATE]} to create, {counts[Change.UPDATE]} to update, "
                f"{counts[Change.DELETE]} to delete, {counts[Change.KEEP]} unchanged"
                + _record_only(counts)
                + "; "
                f"{len(plan.actions)} runtime action{'s' if len(plan.actions) != 1 else ''}"
                + ("" if plan.live else " (skipped)")
                + ".",
                "bold",
            )
        )
    return "\n".join(out) + "\n"


def _record_only(counts: dict[Change, int]) -> str:
    """Changes to the record alone (adopted or forgotten files), when there are any."""
    recorded = counts[Change.ADOPT] + counts[Change.FORGET]
    return f", {recorded} to record" if recorded else ""


def _diff_color(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "bold"
    return {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")


def plan_json(plan: Plan) -> dict[str, Any]:
    counts = plan.counts()
    return {
        "format": 1,
        "spec": plan.spec,
        "root": plan.root,
        "live": plan.live,
        "generation": plan.generation,
        "changes": plan.has_changes,
        "files": [
            {
                "path": f.path,
                "change": str(f.change),
                "kind": str(f.kind),
                "reason": f.reason,
                "apps": list(f.apps),
                "worker": f.worker,
                "drift": f.drift,
                **({"link_target": f.link_target} if f.is_link else {"diff": f.diff()}),
            }
            for f in plan.files
        ],
        "actions": [
            {"kind": str(a.kind), "units": list(a.units), "reason": a.reason} for a in plan.actions
        ],
        "notes": list(plan.notes),
        "blockers": [str(p) for p in plan.blockers],
        "drift": [str(p) for p in plan.drift],
        "summary": {str(c): n for c, n in counts.items()},
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    commands = [list(c.argv) for c in outcome.commands]
    return {
        "files_written": outcome.files_written,
        "files_deleted": outcome.files_deleted,
        "generation": outcome.generation,
        "commands": commands,
        "systemctl_calls": sum(1 for argv in commands if argv[:1] == ["systemctl"]),
        "daemon_reloads": sum(1 for argv in commands if argv[:2] == ["systemctl", "daemon-reload"]),
    }


def outcome_text(outcome: Outcome, plan: Plan, style: Style = plain) -> str:
    runtime = (
        f"{len(outcome.commands)} command{'s' if len(outcome.commands) != 1 else ''} run"
        if plan.live
        else "runtime actions skipped (not the live root)"
    )
    return (
        style(
            f"Applied: {outcome.files_written} written, {outcome.files_deleted} deleted; "
            f"{runtime}; now at generation {outcome.generation}.",
            "green",
        )
        + "\n"
    )
