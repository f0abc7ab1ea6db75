"""Carry out a Plan: switch the files as a set, record them, then tell systemd and nginx.

This is the I/O edge for writes and runtime commands. Every step that can fail leaves the host on
the old files (and, for runtime steps, restarts what it stopped).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import posixpath
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs

from fcgicompose import __version__, names
from fcgicompose.errors import ApplyError, LockError, Problem, StateError
from fcgicompose.plan import Action, ActionKind, Change, FileChange, Plan
from fcgicompose.state import (
    Record,
    RecordEntry,
    clear_path_cache,
    host_path,
    read_fact,
    read_record,
    record_path,
    sha256_text,
)

Progress = Callable[[str], None]


def _never_failing(progress: Progress) -> Progress:
    """`progress`, but a closed or full output (`apply ... | head`) cannot stop an apply."""
    broken = False

    def report(line: str) -> None:
        nonlocal broken
        if not broken:
            try:
                progress(line)
            except OSError:
                broken = True  # the rest of the apply goes on without a reader

    return report


LOCK_NAME = "lock"


@attrs.frozen
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str


def run_command(argv: Sequence[str]) -> CommandResult:
    """Run a host command, capturing its output (stdout and stderr together)."""
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",  # `nginx -T` prints config files in whatever encoding they have
            timeout=120,
            check=False,
        )
    except FileNotFoundError:
        return CommandResult(tuple(argv), 127, f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, f"{argv[0]}: timed out after 120 s")
    return CommandResult(tuple(argv), done.returncode, done.stdout.strip())


Runner = Callable[[Sequence[str]], CommandResult]


@attrs.frozen
class Outcome:
    """What apply did, for the report and --json."""

    files_written: int
    files_deleted: int
    commands: tuple[CommandResult, ...]
    generation: int


# ----------------------------------------------------------------------------- the lock


_HELD: set[str] = set()  # roots this process holds the lock of (the lock is re-entrant)


@contextlib.contextmanager
def locked(root: Path, timeout: float = 30.0) -> Iterator[None]:
    """Hold the root's apply lock; wait at most `timeout` seconds for another holder."""
    state_dir = host_path(root, names.STATE_DIR)
    key = os.path.realpath(state_dir)
    if key in _HELD:
        yield
        return
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = host_path(root, f"{names.STATE_DIR}/{LOCK_NAME}")  # state dir not a symlink out
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockError(
                        [
                            Problem(
                                "another fcgicompose is applying to this root; "
                                f"gave up after {timeout:g} s",
                                file=str(state_dir / LOCK_NAME),
                                hint="wait for it to finish, or raise --lock-timeout",
                            )
                        ]
                    ) from None
                time.sleep(0.1)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the journal
# Written (and fsynced) before the first file is switched and removed once apply has finished
# or rolled back: while it exists, the host may be between the old and the new set of files.
# The next apply (or `fcgicompose recover`) puts the old set back from it, so an apply killed
# at any point leaves the files wholly old or wholly new.

JOURNAL_NAME = "journal.json"


def journal_path(root: Path) -> Path:
    return host_path(root, f"{names.STATE_DIR}/{JOURNAL_NAME}")


# The runtime steps an apply began, one JSON line each, written before the step runs: what
# recovery must undo on the host, besides the files, after a kill -9 during those steps.
RUNTIME_LOG_NAME = "journal-runtime.jsonl"


def runtime_log_path(root: Path) -> Path:
    return host_path(root, f"{names.STATE_DIR}/{RUNTIME_LOG_NAME}")


def _log_attempt(root: Path, action: Action) -> None:
    line = json.dumps({"kind": str(action.kind), "units": list(action.units)}) + "\n"
    fd = os.open(
        runtime_log_path(root), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600
    )
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _logged_attempts(root: Path) -> list[Action]:
    """The steps the interrupted apply began; a line torn by the kill is dropped."""
    try:
        text = runtime_log_path(root).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    attempts = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            attempts.append(Action(ActionKind(data["kind"]), tuple(map(str, data["units"]))))
        except (ValueError, KeyError, TypeError):
            continue
    return attempts


def _write_journal(root: Path, undo: Sequence[_Undo], old_record_text: str | None) -> None:
    entries = [
        {
            "path": step.target,
            "existed": step.existed,
            "content": step.content,
            "link_target": step.link_target,
        }
        for step in undo
    ]
    data = {"format": 1, "old_record": old_record_text, "paths": entries}
    _write_atomically(journal_path(root), json.dumps(data, separators=(",", ":")), mode=0o600)


def recover(
    root: Path, progress: Progress = lambda line: None, runner: Runner | None = None
) -> bool:
    """Undo an interrupted apply from its journal; True if there was one. Hold the lock.

    Puts back the files and the record; with a `runner` (the live host) also undoes the
    runtime steps the apply had begun: daemon-reload, units back as they were, nginx reloaded.
    """
    progress = _never_failing(progress)
    path = journal_path(root)
    with contextlib.suppress(FileNotFoundError):
        _temp_path(path).unlink()  # a journal never finished: nothing was switched yet
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            runtime_log_path(root).unlink()  # left by an apply killed just after its commit
        return False
    except ValueError:
        # Torn while being written: nothing was switched yet (the journal comes first).
        path.unlink()
        return True
    try:
        steps = [
            _Undo(
                host_path(root, e["path"]), e["path"], e["content"], e["link_target"], e["existed"]
            )
            for e in data["paths"]
        ]
        old_record = data["old_record"]
        if old_record is not None:
            Record.from_json(old_record, str(path))  # refuse to restore garbage as the record
        if any(s.existed and s.content is None and not s.link_target for s in steps):
            raise TypeError("a journaled file has no content")
    except (KeyError, TypeError, AttributeError, StateError) as error:
        raise StateError(
            [
                Problem(
                    f"the journal of an interrupted apply is unreadable ({error})",
                    file=str(path),
                    hint="check the files it lists by hand, then move it away",
                )
            ]
        ) from None
    progress("recovering: an earlier apply was interrupted; restoring the files it replaced")
    restore_files(steps)
    for step in steps:  # a temp file the interrupted write may have left beside its target
        with contextlib.suppress(FileNotFoundError):
            _temp_path(step.path).unlink()
    record = record_path(root)
    if old_record is None:
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
    else:
        _write_atomically(record, old_record, mode=0o600)
    # The interrupted generation may have kept its spec already: it never stood, drop it.
    restored, _ = read_record(root)
    generations = host_path(root, f"{names.STATE_DIR}/generations")
    for kept in generations.glob("*") if generations.is_dir() else ():
        if not kept.name.isdigit() or int(kept.name) > restored.generation:
            shutil.rmtree(kept)
    attempts = _logged_attempts(root)
    if runner is not None and {a.kind for a in attempts} - {ActionKind.NGINX_TEST}:
        progress("recovering: bringing the units and nginx back to the restored files")
        _undo_runtime(attempts, runner)
    # The journal goes last: killed before this, the next recovery does it all again.
    with contextlib.suppress(FileNotFoundError):
        runtime_log_path(root).unlink()
    path.unlink()
    _fsync_dir(path.parent)
    return True


def _undo_runtime(attempts: Sequence[Action], run: Runner) -> None:
    """Bring units and nginx back to the files just restored, after `attempts` ran (or began).

    Every step is safe to repeat and none may stop the others: this runs after a failure.
    """
    attempted: dict[ActionKind, list[str]] = {}  # a kind may come twice (moved sockets)
    for action in attempts:
        attempted.setdefault(action.kind, []).extend(action.units)
    run(("systemctl", "daemon-reload"))
    # RELISTEN is left as it is: a socket that listens again serves the restored unit too.
    started = attempted.get(ActionKind.START, [])
    if started:
        services = [u.replace(".socket", ".service") for u in started]
        run(("systemctl", "stop", *services, *started))
    for unit in attempted.get(ActionKind.RESTART_SOCKETS, []):
        run(("systemctl", "stop", unit.replace(".socket", ".service"), unit))
        run(("systemctl", "start", unit))
    restarted = attempted.get(ActionKind.RESTART_SERVICES, [])
    if restarted:
        # A new program may have failed (and tripped its start limit): clear that, and let
        # each socket start the old program at the next request.
        their_sockets = [u.replace(".service", ".socket") for u in restarted]
        run(("systemctl", "reset-failed", *restarted, *their_sockets))
        run(("systemctl", "stop", *restarted))
        run(("systemctl", "start", *their_sockets))
    stopped = [u for u in attempted.get(ActionKind.STOP, []) if u.endswith(".socket")]
    if stopped:
        run(("systemctl", "start", *stopped))
    if ActionKind.NGINX_RELOAD in attempted:
        run(("systemctl", "try-reload-or-restart", "nginx.service"))


# ----------------------------------------------------------------------------- files


def _write_atomically(
    path: Path, content: str | None, link_target: str = "", mode: int = 0o644, sync_dir: bool = True
) -> None:
    """Write via a temp file in the same directory (mode set, fsynced), then rename.

    With sync_dir=False the caller fsyncs the directory itself, once for many files.
    """
    _make_directories(path.parent, 0o755)
    temp = _temp_path(path)
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    if link_target:
        os.symlink(link_target, temp)
    else:
        assert content is not None
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # not subject to the umask
            data = memoryview(content.encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(temp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def _make_directories(directory: Path, mode: int) -> None:
    """mkdir -p with `mode` on each directory it creates, whatever the umask (an admin's
    umask 077 must not leave /etc/nginx/conf.d unreadable to whoever reads it)."""
    if directory.is_dir():
        return
    _make_directories(directory.parent, mode)
    with contextlib.suppress(FileExistsError):
        directory.mkdir()
        os.chmod(directory, mode)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.fcgicompose-tmp")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.frozen
class _Undo:
    """How to put one path back: its old content or link, or remove it."""

    path: Path
    target: str  # the path on the target host, for the journal
    content: str | None
    link_target: str
    existed: bool

    def run(self) -> None:
        if self.existed:
            _write_atomically(self.path, self.content, self.link_target)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def check_not_moved(root: Path, plan: Plan) -> None:
    """Refuse if a file the plan changes is no longer what the plan saw."""
    moved = []
    for change in plan.changes:
        if not change.change.touches_disk:
            continue
        fact = read_fact(root, change.path)
        expected_exists = change.change is not Change.CREATE
        if change.is_link:
            same = fact.exists == expected_exists
        else:
            same = fact.exists == expected_exists and (
                not expected_exists or fact.content == change.old_content
            )
        if not same:
            moved.append(
                Problem("changed since the plan was made", file=change.path, hint="run plan again")
            )
    if moved:
        raise StateError(moved)


def switch_files(
    root: Path, changes: Sequence[FileChange], progress: Progress, old_record_text: str | None
) -> None:
    """Journal the old state, then put every changed file in place; on error undo them."""
    clear_path_cache()
    undo = []
    for change in changes:
        before = read_fact(root, change.path)
        undo.append(
            _Undo(host_path(root, change.path), change.path, before.content,
                  before.link_target, before.exists)
        )  # fmt: skip
    _write_journal(root, undo, old_record_text)
    directories = set()
    try:
        for change in changes:
            target = host_path(root, change.path)
            if change.change is Change.DELETE:
                target.unlink()
            else:
                _write_atomically(target, change.content, change.link_target, sync_dir=False)
            directories.add(target.parent)
            progress(f"{change.change.symbol} {change.path}")
        for directory in sorted(directories):  # the renames are durable before the record moves
            _fsync_dir(directory)
    except OSError as error:
        restore_files(undo)
        journal_path(root).unlink()
        raise ApplyError(
            [
                Problem(
                    f"writing failed: {error.strerror}; the old files were put back",
                    file=change.path,
                )
            ]
        ) from None


def restore_files(undo: Sequence[_Undo]) -> None:
    for step in reversed(undo):
        step.run()


def new_record(plan: Plan, old: Record) -> Record:
    """The record after a successful switch."""
    entries = dict(old.entries)
    for change in plan.files:
        if change.change in (Change.DELETE, Change.FORGET):
            entries.pop(change.path, None)
            continue
        entries[change.path] = RecordEntry(
            path=change.path,
            kind=change.kind,
            sha256="" if change.is_link else sha256_text(change.content),
            link_target=change.link_target,
            apps=change.apps,
            worker=change.worker,
        )
    return Record(
        generation=old.generation + 1,
        spec=plan.spec,
        entries=entries,
        spec_sha256=sha256_text(plan.spec_text) if plan.spec_text else "",
        tool_version=__version__,
        accounts=plan.accounts,
    )


def generation_spec(root: Path, generation: int, spec_name: str) -> Path:
    """Where the spec of an applied generation is kept (for `fcgicompose rollback`)."""
    return host_path(root, f"{names.STATE_DIR}/generations/{generation}/{spec_name}")


def write_record(root: Path, record: Record) -> None:
    path = record_path(root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    _write_atomically(path, record.to_json(), mode=0o600)


# ----------------------------------------------------------------------------- runtime


@attrs.define
class _Runtime:
    """Runs the plan's runtime actions and remembers what to undo."""

    runner: Runner
    progress: Progress
    root: Path  # "/" on the live host; a scratch root in tests
    results: list[CommandResult] = attrs.field(factory=list)
    attempted: list[Action] = attrs.field(factory=list)

    def run_unchecked(self, argv: Sequence[str]) -> CommandResult:
        """A Runner for undoing: every step runs, whatever the one before it did."""
        return self.run(*argv, check=False)

    def run(self, *argv: str, check: bool = True) -> CommandResult:
        self.progress("  $ " + " ".join(argv))
        result = self.runner(argv)
        self.results.append(result)
        if check and result.returncode != 0:
            raise _StepFailed(result)
        return result

    def action(self, action: Action) -> None:
        self.attempted.append(action)
        kind, units = action.kind, list(action.units)
        if kind is ActionKind.NGINX_TEST:
            self.test_nginx(units)
        elif kind is ActionKind.DAEMON_RELOAD:
            self.run("systemctl", "daemon-reload")
        elif kind in (ActionKind.START, ActionKind.RELISTEN):
            self.run("systemctl", "start", *units)
        elif kind is ActionKind.RESTART_SOCKETS:
            for socket in units:  # one at a time: the other workers keep serving
                service = socket.replace(".socket", ".service")
                self.run("systemctl", "stop", service, socket)
                self.run("systemctl", "start", socket)
        elif kind is ActionKind.RESTART_SERVICES:
            self.run("systemctl", "try-restart", *units)
        elif kind is ActionKind.NGINX_RELOAD:
            self.reload_nginx()
        elif kind is ActionKind.STOP:
            # A removed worker that never got a request has no loaded service once its file is
            # gone ("not loaded"): that is stopped enough. Only a unit still running is a failure.
            self.run("systemctl", "stop", *units, check=False)
            result = self.run("systemctl", "is-active", *units, check=False)
            running = [
                f"{unit} is {state}"
                for unit, state in zip(units, result.output.splitlines(), strict=False)
                if state in ("active", "activating", "deactivating", "reloading")
            ]
            if running:
                raise _StepFailed(attrs.evolve(result, output="; ".join(running)))
        elif kind is ActionKind.RESET_FAILED:
            self.run("systemctl", "reset-failed", *units, check=False)  # fails if none failed
        elif kind is ActionKind.VERIFY:
            self.verify(units)
        elif kind is ActionKind.REMOVE_STALE_SOCKETS:
            for path in units:
                self.progress(
                    f"  removing {path}"
                    if _remove_stale_socket(path)
                    else f"  ({path} in use or not a socket: left alone)"
                )

    def test_nginx(self, files: Sequence[str]) -> None:
        """`nginx -T`: the config is valid and includes every file we keep for it.

        A conf_dir that nginx.conf does not include would pass `nginx -t` and serve nothing.
        """
        result = self.run("nginx", "-T", "-q")
        read = files_in_nginx_dump(result.output, self.read_text)
        # nginx names files as its include spells them (/etc/nginx/../nginx/conf.d/x.conf,
        # or through a symlinked directory): the same file is the same inode.
        identities = {self.identity(name) for name in read} - {None}
        unread = [p for p in files if p not in read and self.identity(p) not in identities]
        if unread:
            directory = posixpath.dirname(unread[0])
            message = f"nginx does not read {unread[0]}: no include of {directory}/*.conf"
            raise _StepFailed(attrs.evolve(result, output=message))

    def read_text(self, path: str) -> str | None:
        """A file as `nginx -T` prints it, read back like run_command reads output (UTF-8 with
        replacement, universal newlines: CRLF and CR become LF); None if unreadable."""
        try:
            data = host_path(self.root, path).read_bytes().decode("utf-8", "replace")
        except (OSError, StateError):
            return None
        return data.replace("\r\n", "\n").replace("\r", "\n")

    def identity(self, path: str) -> tuple[int, int] | None:
        try:
            info = host_path(self.root, path).stat()
        except (OSError, StateError):
            return None
        return info.st_dev, info.st_ino

    def reload_nginx(self, timeout: float = 15.0) -> None:
        """Reload nginx and wait (bounded) until the workers with the old config are gone.

        The reload signal returns at once while the old workers keep accepting for a moment
        and then finish their requests; stopping a removed worker's socket before they are
        done would fail those requests.
        """
        master = self.run("systemctl", "show", "-P", "MainPID", "nginx.service", check=False).output
        old = _nginx_workers(int(master)) if master.isdigit() and master != "0" else set()
        self.run("systemctl", "try-reload-or-restart", "nginx.service")
        deadline = time.monotonic() + timeout
        while old and old & _nginx_workers(int(master)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def verify(self, sockets: Sequence[str], settle: float = 2.0) -> None:
        """Every socket listens, and each worker, woken by a connection, stays up.

        Catches a program that exits at once (wrong path, crash on start) before the apply is
        declared good, so it can still be rolled back.
        """
        result = self.run("systemctl", "is-active", *sockets, check=False)
        states = result.output.splitlines()
        bad = [f"{u} is {s}" for u, s in zip(sockets, states, strict=False) if s != "active"]
        if bad or len(states) != len(sockets):
            raise _StepFailed(attrs.evolve(result, output="; ".join(bad) or result.output))
        listens = self.run("systemctl", "show", "-P", "Listen", *sockets, check=False)
        for line in listens.output.splitlines():
            _wake(line.rsplit(" (", 1)[0])
        time.sleep(settle)
        services = [s.replace(".socket", ".service") for s in sockets]
        result = self.run("systemctl", "is-active", *services, check=False)
        down = [
            (unit, state)
            for unit, state in zip(services, result.output.splitlines(), strict=False)
            if state != "active"
        ]
        if down:
            journal = self.run(
                "journalctl", "--no-pager", "-n", "8", "-o", "cat", "-u", down[0][0], check=False
            )
            summary = "; ".join(f"{unit} is {state}" for unit, state in down)
            raise _StepFailed(attrs.evolve(result, output=f"{summary}\n{journal.output}"))


def _wake(socket_path: str) -> None:
    """Connect to a socket so systemd starts its worker; the connection carries no request."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        probe.connect(socket_path)


_DUMP_MARKER = "# configuration file "


def files_in_nginx_dump(dump: str, read: Callable[[str], str | None]) -> list[str]:
    """The files `nginx -T` says it read, in order; `read(name)` gives a file's text.

    nginx prints each file as "# configuration file NAME:\n", its text, "\n" (after any
    warnings). A line inside a file may look like a marker, e.g. in an nginx.conf flattened
    from an old `nginx -T` that inlines stale copies of our files, so the walk steps over each
    file's text, compared with the file itself, instead of trusting lines. It stops where the
    dump and the files disagree: what follows counts as not read.
    """
    if dump.startswith(_DUMP_MARKER):
        position = 0
    else:
        position = dump.find("\n" + _DUMP_MARKER) + 1
        if position == 0:
            return []
    names: list[str] = []
    while dump.startswith(_DUMP_MARKER, position):
        end = dump.find(":\n", position)
        text = read(dump[position + len(_DUMP_MARKER) : end]) if end >= 0 else None
        if text is None:
            break
        names.append(dump[position + len(_DUMP_MARKER) : end])
        body = end + 2
        if dump.startswith(text + "\n", body):
            position = body + len(text) + 1
            continue
        rest = dump[body:]  # the runner strips the end of the output: the last file may be cut
        if not (text.startswith(rest) and not text[len(rest) :].strip()):
            names.pop()
        break
    return names


def _remove_stale_socket(path: str) -> bool:
    """Delete `path` if it is a socket file nobody listens on; True if it was deleted."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(path)
        return False  # someone listens there: not stale
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    except OSError:
        return False


def _nginx_workers(master: int) -> set[int]:
    """PIDs of the nginx master's worker processes, old ones shutting down included."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return set()
    workers = set()
    for child in children:
        with contextlib.suppress(OSError):
            if b"worker process" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(int(child))
    return workers


class _StepFailed(Exception):
    def __init__(self, result: CommandResult) -> None:
        super().__init__(" ".join(result.argv))
        self.result = result


def apply_plan(
    plan: Plan,
    root: Path,
    *,
    force: bool = False,
    runner: Runner = run_command,
    progress: Progress = lambda line: None,
    rollback: bool = True,
    lock_timeout: float = 30.0,
) -> Outcome:
    """Carry out `plan` on `root`. Runtime actions run only for a live plan."""
    progress = _never_failing(progress)
    if plan.blockers:
        raise StateError(plan.blockers)
    if plan.drift and not force:
        raise StateError(plan.drift)
    with locked(root, lock_timeout):
        recover(root, progress, runner if plan.live else None)
        old_record, _ = read_record(root)
        old_record_text = record_path(root).read_text() if old_record.generation else None
        if old_record.generation != plan.generation:
            raise StateError(
                [
                    Problem(
                        f"the record moved from generation {plan.generation} to "
                        f"{old_record.generation} since the plan was made",
                        file=str(record_path(root)),
                        hint="run plan again",
                    )
                ]
            )
        check_not_moved(root, plan)
        changes = [c for c in plan.changes if c.change.touches_disk]
        switch_files(root, changes, progress, old_record_text)
        runtime = _Runtime(runner, progress, root)
        try:
            record = new_record(plan, old_record)
            write_record(root, record)
            if plan.live:
                for action in plan.actions:
                    progress(f"→ {action.describe()}")
                    _log_attempt(root, action)
                    runtime.action(action)
            if plan.spec_text:  # kept for `rollback`, once the generation stands
                kept = generation_spec(root, record.generation, plan.spec)
                shutil.rmtree(kept.parent, ignore_errors=True)  # stale if the record was lost
                _write_atomically(kept, plan.spec_text, mode=0o600)
            journal_path(root).unlink()  # the commit point: the new set stands
            with contextlib.suppress(FileNotFoundError):
                runtime_log_path(root).unlink()  # left behind, the next recovery removes it
        except _StepFailed as failed:
            message = (
                f"`{' '.join(failed.result.argv)}` failed: {failed.result.output or 'no output'}"
            )
            if not rollback:
                raise ApplyError(
                    [Problem(message, hint="--no-rollback: the new files stay in place")]
                ) from None
            _roll_back(root, runtime, progress, plan.live)
            raise ApplyError(
                [Problem(message, hint="the previous files and units were restored")]
            ) from None
        except BaseException:
            # Anything unexpected (a bug, Ctrl-C) after the switch: never leave a half-done host.
            _roll_back(root, runtime, progress, plan.live)
            raise
        written = sum(1 for c in changes if c.change is not Change.DELETE)
        return Outcome(written, len(changes) - written, tuple(runtime.results), record.generation)


def _roll_back(root: Path, runtime: _Runtime, progress: Progress, live: bool) -> None:
    """Put the old files back and bring the units and nginx back to how they were."""
    progress("rolling back: restoring the previous files")
    # The journal holds exactly the old files and record, the runtime log what ran.
    recover(root, progress, runner=runtime.run_unchecked if live else None)
