"""Desired artifacts vs installed facts -> a Plan: file changes plus ordered runtime actions.

Pure: values in, a value out. `plan` prints a Plan, `apply` carries out the same object.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import attrs

from fcgicompose import names
from fcgicompose.errors import Problem
from fcgicompose.graph import Artifact, Kind
from fcgicompose.render.systemd import listen_path, runtime_relevant
from fcgicompose.settings import StrEnum
from fcgicompose.state import FileFact, Record, RecordEntry, sha256_text


class Change(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ADOPT = "adopt"  # identical file found unrecorded: record it, write nothing
    FORGET = "forget"  # recorded file already gone: drop it from the record
    KEEP = "keep"

    @property
    def symbol(self) -> str:
        return {
            "create": "+",
            "update": "~",
            "delete": "-",
            "adopt": "=",
            "forget": "x",
            "keep": " ",
        }[self.value]

    @property
    def touches_disk(self) -> bool:
        return self in (Change.CREATE, Change.UPDATE, Change.DELETE)


@attrs.frozen
class FileChange:
    """What happens to one path, and why."""

    path: str
    change: Change
    kind: Kind
    reason: str
    apps: tuple[str, ...] = ()
    worker: int = 0
    content: str = ""  # new content (create/update of a file)
    link_target: str = ""  # new symlink target
    old_content: str | None = None  # for diffs
    drift: bool = False  # the file was changed by hand since fcgicompose wrote it

    @property
    def is_link(self) -> bool:
        return self.kind is Kind.ENABLE_LINK

    def diff(self) -> str:
        """Unified diff of a file change ('' for links and unchanged files)."""
        if self.is_link or not self.change.touches_disk:
            return ""
        old = (self.old_content or "").splitlines(keepends=True)
        new = self.content.splitlines(keepends=True) if self.change is not Change.DELETE else []
        return "".join(
            difflib.unified_diff(old, new, f"installed {self.path}", f"planned {self.path}")
        )


class ActionKind(StrEnum):
    NGINX_TEST = "nginx-test"
    DAEMON_RELOAD = "daemon-reload"
    START = "start"
    RESTART_SOCKETS = "restart-sockets"
    RESTART_SERVICES = "restart-services"
    NGINX_RELOAD = "nginx-reload"
    STOP = "stop"
    RESET_FAILED = "reset-failed"
    RELISTEN = "relisten"
    VERIFY = "verify"
    REMOVE_STALE_SOCKETS = "remove-stale-sockets"


@attrs.frozen
class Action:
    """One runtime step, in plan order, with the units it touches and why."""

    kind: ActionKind
    units: tuple[str, ...] = ()
    reason: str = ""

    def describe(self) -> str:
        what = {
            ActionKind.NGINX_TEST: "nginx -T",
            ActionKind.DAEMON_RELOAD: "systemctl daemon-reload",
            ActionKind.START: "systemctl start",
            ActionKind.RESTART_SOCKETS: "restart socket with its service, one at a time:",
            ActionKind.RESTART_SERVICES: "systemctl try-restart",
            ActionKind.NGINX_RELOAD: "systemctl try-reload-or-restart nginx.service",
            ActionKind.STOP: "systemctl stop",
            ActionKind.RESET_FAILED: "systemctl reset-failed",
            ActionKind.RELISTEN: "systemctl start",
            ActionKind.VERIFY: "check listening and wake each worker:",
            ActionKind.REMOVE_STALE_SOCKETS: "remove the old socket files nothing listens on:",
        }[self.kind]
        if self.kind is ActionKind.NGINX_TEST:
            # The files can be thousands; the plan lists them above already.
            return f"{what} (valid, and includes the {len(self.units)} files fcgicompose keeps)"
        return " ".join([what, *self.units])


@attrs.frozen
class Plan:
    """Everything apply will do, decided before anything is touched."""

    spec: str
    root: str
    live: bool  # runtime actions run only against the live root /
    files: tuple[FileChange, ...]
    actions: tuple[Action, ...]
    notes: tuple[str, ...]  # why something needs no action
    blockers: tuple[Problem, ...]  # foreign files: apply refuses, even with --force
    drift: tuple[Problem, ...]  # hand edits: apply refuses without --force
    generation: int  # the record generation this plan was made against
    spec_text: str = ""  # the spec itself, kept as the new generation when applied
    accounts: tuple[str, ...] = ()  # "user:NAME" / "group:NAME" the generated units need

    @property
    def changes(self) -> tuple[FileChange, ...]:
        return tuple(f for f in self.files if f.change is not Change.KEEP)

    @property
    def has_changes(self) -> bool:
        """Whether apply would do anything (runtime actions only follow file changes)."""
        return bool(self.changes)

    def counts(self) -> dict[Change, int]:
        return {c: sum(1 for f in self.files if f.change is c) for c in Change}


def make_plan(
    *,
    spec: str,
    root: str,
    live: bool,
    desired: Sequence[Artifact],
    facts: Mapping[str, FileFact],
    record: Record,
    spec_text: str = "",
    accounts: tuple[str, ...] = (),
) -> Plan:
    """Compare what the spec produces with what is there and what the tool wrote before."""
    files: list[FileChange] = []
    blockers: list[Problem] = []
    drift: list[Problem] = []
    wanted = {artifact.path for artifact in desired}
    for artifact in desired:
        change, problem = _desired_change(
            artifact, facts[artifact.path], record.entries.get(artifact.path)
        )
        files.append(change)
        if problem and change.drift:
            drift.append(problem)
        elif problem:
            blockers.append(problem)
    for path, entry in sorted(record.entries.items()):
        if path in wanted:
            continue
        change, problem = _removal(entry, facts[path])
        files.append(change)
        if problem and change.drift:
            drift.append(problem)
        elif problem:
            blockers.append(problem)
    actions, notes = _runtime_actions(files)
    return Plan(
        spec=spec,
        root=root,
        live=live,
        files=tuple(files),
        actions=tuple(actions),
        notes=tuple(notes),
        blockers=tuple(blockers),
        drift=tuple(drift),
        generation=record.generation,
        spec_text=spec_text,
        accounts=accounts,
    )


def _desired_change(
    artifact: Artifact, fact: FileFact, entry: RecordEntry | None
) -> tuple[FileChange, Problem | None]:
    base = FileChange(
        path=artifact.path,
        change=Change.KEEP,
        kind=artifact.kind,
        reason="up to date",
        apps=artifact.apps,
        worker=artifact.worker,
        content=artifact.content,
        link_target=artifact.link_target,
        old_content=fact.content,
    )
    identical = fact.matches(artifact.content, artifact.link_target)
    if fact.is_other or (fact.exists and not fact.is_link and fact.content is None):
        return base, _not_a_text_file(artifact.path)
    if not fact.exists:
        reason = "recorded but missing on disk" if entry else "new"
        return attrs.evolve(base, change=Change.CREATE, reason=reason), None
    if entry is None:
        if identical:
            # Byte-identical to what we would write: e.g. the record was lost. Take it over.
            return attrs.evolve(
                base, change=Change.ADOPT, reason="identical file found unrecorded; recording it"
            ), None
        return base, Problem(
            "exists and was not written by fcgicompose; refusing to overwrite it",
            file=artifact.path,
            hint="move it away (fcgicompose never overwrites or deletes files it did not write)",
        )
    if identical:
        return base, None
    update = attrs.evolve(base, change=Change.UPDATE, reason="spec changed")
    if not entry.matches(fact):
        return attrs.evolve(
            update, reason="edited by hand since the last apply", drift=True
        ), Problem(
            "changed by hand since fcgicompose wrote it (drift)",
            file=artifact.path,
            hint="fold the edit into the spec, or use --force to overwrite it",
        )
    return update, None


def _not_a_text_file(path: str) -> Problem:
    return Problem(
        "is a directory, device or binary file where fcgicompose keeps a text file",
        file=path,
        hint="see who put it there and move it away (never touched, even with --force)",
    )


def _removal(entry: RecordEntry, fact: FileFact) -> tuple[FileChange, Problem | None]:
    change = FileChange(
        path=entry.path,
        change=Change.DELETE,
        kind=entry.kind,
        reason="no longer in the spec",
        apps=entry.apps,
        worker=entry.worker,
        old_content=fact.content,
    )
    if fact.is_other or (fact.exists and not fact.is_link and fact.content is None):
        return attrs.evolve(change, change=Change.KEEP), _not_a_text_file(entry.path)
    if not fact.exists:
        return attrs.evolve(
            change, change=Change.FORGET, reason="already gone; dropping it from the record"
        ), None
    if not entry.matches(fact):
        return attrs.evolve(
            change, drift=True, reason="edited by hand, then dropped from the spec"
        ), Problem(
            "changed by hand since fcgicompose wrote it (drift); refusing to delete it",
            file=entry.path,
            hint="use --force to delete it anyway",
        )
    return change, None


def _runtime_actions(files: Iterable[FileChange]) -> tuple[list[Action], list[str]]:
    """Derive the systemd and nginx steps from the file changes (domain items 15, 20-23)."""
    files = list(files)
    changed = [f for f in files if f.change.touches_disk]
    actions: list[Action] = []
    notes: list[str] = []

    def of(kind: Kind, change: Change) -> list[FileChange]:
        return [f for f in changed if f.kind is kind and f.change is change]

    new_links = of(Kind.ENABLE_LINK, Change.CREATE)
    gone_links = of(Kind.ENABLE_LINK, Change.DELETE)
    kept_workers: dict[str, list[int]] = defaultdict(list)
    for f in files:
        if f.kind is Kind.ENABLE_LINK and f.change in (Change.KEEP, Change.ADOPT):
            kept_workers[f.apps[0]].append(f.worker)
    restart_sockets: list[str] = []
    restart_services: list[str] = []
    stale_paths: list[str] = []
    for unit_file in of(Kind.SOCKET_UNIT, Change.UPDATE) + of(Kind.SERVICE_UNIT, Change.UPDATE):
        app = unit_file.apps[0]
        unit = unit_file.path.rsplit("/", 1)[1]
        workers = sorted(kept_workers.get(app, ()))
        if runtime_relevant(unit_file.old_content or "") == runtime_relevant(unit_file.content):
            notes.append(f"{unit}: only the description or comments changed; nothing restarted")
            continue
        if not workers:
            continue
        if unit_file.kind is Kind.SOCKET_UNIT:
            restart_sockets += [names.socket_instance(app, w) for w in workers]
            # systemd removes a stopped socket's file at the path of the unit it has loaded,
            # which after daemon-reload is the new one: the old files are left to us.
            for w in workers:
                old_path = listen_path(unit_file.old_content or "", w)
                if old_path and old_path != listen_path(unit_file.content, w):
                    stale_paths.append(old_path)
        else:
            restart_services += [names.service_instance(app, w) for w in workers]
    # A socket restart also restarts its service; don't do that twice.
    restarted_by_socket = {s.replace(".socket", ".service") for s in restart_sockets}
    restart_services = [s for s in restart_services if s not in restarted_by_socket]

    nginx_changed = any(f.kind.is_nginx for f in changed)
    units_changed = any(f.kind.is_unit for f in changed)
    if nginx_changed:
        kept = (Change.CREATE, Change.UPDATE, Change.KEEP, Change.ADOPT)
        nginx_files = tuple(f.path for f in files if f.kind.is_nginx and f.change in kept)
        actions.append(
            Action(
                ActionKind.NGINX_TEST,
                nginx_files,
                "never reload nginx with a broken config, or one that does not read these files",
            )
        )
    if units_changed:
        actions.append(Action(ActionKind.DAEMON_RELOAD, reason="unit files changed"))
    new_sockets = tuple(names.socket_instance(f.apps[0], f.worker) for f in new_links)
    if new_sockets:
        actions.append(Action(ActionKind.START, new_sockets, "new workers"))
    # Sockets that moved: nginx still routes to the old paths until it reloads, and a
    # restarted socket's old path is gone. Restart all but the last worker of each such app,
    # reload nginx, then the last one: at every moment some path nginx knows is listening
    # (nginx passes a request that cannot connect on to the next worker).
    moved = {app for f in of(Kind.NGINX_UPSTREAM, Change.UPDATE) for app in f.apps}
    last_of_moved = {
        names.socket_instance(app, max(kept_workers[app]))
        for app in moved
        if len(kept_workers.get(app, ())) > 1
    }
    early_sockets = [s for s in restart_sockets if s not in last_of_moved]
    late_sockets = [s for s in restart_sockets if s in last_of_moved]
    for app in sorted(moved):
        if len(kept_workers.get(app, ())) == 1 and any(
            s == names.socket_instance(app, kept_workers[app][0]) for s in restart_sockets
        ):
            notes.append(
                f"{app} has one worker: while its socket restarts, its requests fail (502)"
            )
    if early_sockets:
        actions.append(
            Action(
                ActionKind.RESTART_SOCKETS,
                tuple(early_sockets),
                "socket unit changed; a listening socket keeps its old settings until restarted",
            )
        )
    if restart_services:
        actions.append(
            Action(
                ActionKind.RESTART_SERVICES,
                tuple(restart_services),
                "service unit changed; sockets keep listening and queue requests meanwhile",
            )
        )
    if nginx_changed:
        actions.append(Action(ActionKind.NGINX_RELOAD, reason="nginx config changed"))
    if late_sockets:
        actions.append(
            Action(
                ActionKind.RESTART_SOCKETS,
                tuple(late_sockets),
                "the last worker of a moved socket: only once nginx routes to the new paths",
            )
        )
    if stale_paths:
        actions.append(
            Action(
                ActionKind.REMOVE_STALE_SOCKETS,
                tuple(stale_paths),
                "the sockets moved; systemd leaves the old files behind (RemoveOnStop= "
                "applies to the new path)",
            )
        )
    gone = tuple(
        unit
        for f in gone_links
        for unit in (
            names.socket_instance(f.apps[0], f.worker),
            names.service_instance(f.apps[0], f.worker),
        )
    )
    if gone:
        actions.append(
            Action(
                ActionKind.STOP,
                gone,
                "workers removed from the spec; nginx no longer routes to them",
            )
        )
    # A crash loop trips the service's start limit, and systemd then fails its socket, which
    # stops listening: the fix (a changed unit) must reset both and listen again.
    restarted_workers = tuple(s.replace(".service", ".socket") for s in restart_services)
    touched = (
        new_sockets
        + tuple(
            unit
            for socket in (*restart_sockets, *restarted_workers)
            for unit in (socket, socket.replace(".socket", ".service"))
        )
        + gone
    )
    if touched:
        actions.append(
            Action(
                ActionKind.RESET_FAILED,
                touched,
                "a fixed app must not stay failed from old crashes",
            )
        )
    if restarted_workers:
        actions.append(
            Action(
                ActionKind.RELISTEN,
                restarted_workers,
                "a socket that a crash loop of its worker stopped listens again "
                "(nothing happens to one that listens)",
            )
        )
    listening = tuple(restart_sockets) + new_sockets + restarted_workers
    if listening:
        actions.append(
            Action(
                ActionKind.VERIFY,
                listening,
                "every started socket must listen and its worker must stay up when woken",
            )
        )
    return actions, notes


def fingerprint_of(content: str) -> str:
    return sha256_text(content)
