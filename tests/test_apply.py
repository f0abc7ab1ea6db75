"""Apply's orchestration with a recording command runner (the real systemd run is in tests/system).

A live plan (root "/") is built against a scratch root so the exact systemctl/nginx command
sequence, batching and rollback can be checked without touching this host.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from fcgicompose.apply import (
    CommandResult,
    apply_plan,
    files_in_nginx_dump,
    recover,
    run_command,
)
from fcgicompose.errors import ApplyError, LockError
from fcgicompose.plan import Plan
from fcgicompose.spec import parse_spec
from fcgicompose.state import read_record
from fcgicompose.workflow import plan_for

SPEC = """version = 1
[apps.a]
command = ["/usr/bin/a"]
user = "www-data"
workers = 2
environment = { MODE = "MODE_VALUE" }
[apps.a.route]
server_name = ["a.example.org"]
"""


class Recorder:
    """Records commands; fails the first one starting with `fail_on`.

    `nginx -T` answers like an nginx.conf with `include /etc/nginx/conf.d/*.conf` would, from
    the files under `root` at the time of the call, naming them `nginx_spells` + file name;
    `nginx_includes=False` stands for an nginx.conf that includes no such directory.
    """

    def __init__(
        self,
        root: Path,
        fail_on: tuple[str, ...] = (),
        *,
        nginx_includes: bool = True,
        nginx_spells: str = "/etc/nginx/conf.d/",
    ) -> None:
        self.root = root
        self.fail_on = fail_on
        self.nginx_includes = nginx_includes
        self.nginx_spells = nginx_spells
        self.commands: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.commands.append(tuple(argv))
        if self.fail_on and tuple(argv[: len(self.fail_on)]) == self.fail_on:
            return CommandResult(tuple(argv), 1, "simulated failure")
        if tuple(argv[:2]) == ("nginx", "-T"):
            dump = ""
            if self.nginx_includes:
                for conf in sorted((self.root / "etc/nginx/conf.d").glob("*.conf")):
                    name = self.nginx_spells + conf.name
                    dump += f"# configuration file {name}:\n{conf.read_text()}\n"
            return CommandResult(tuple(argv), 0, dump.strip())  # as run_command strips
        if argv[:2] == ["systemctl", "is-active"] or tuple(argv[:2]) == ("systemctl", "is-active"):
            return CommandResult(tuple(argv), 0, "\n".join("active" for _ in argv[2:]))
        return CommandResult(tuple(argv), 0, "")


def live_plan(root: Path, mode: str = "one", workers: int = 2) -> Plan:
    text = SPEC.replace("MODE_VALUE", mode).replace("workers = 2", f"workers = {workers}")
    return attrs.evolve(plan_for(parse_spec(text, "spec.toml"), root), live=True)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text() if not p.is_symlink() else "->" + str(p.readlink())
        for p in sorted(root.rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.name != "lock"
    }


def test_fresh_apply_runs_steps_in_order_and_batched(tmp_path: Path) -> None:
    runner = Recorder(tmp_path)
    outcome = apply_plan(live_plan(tmp_path), tmp_path, runner=runner)
    assert runner.commands == [
        ("nginx", "-T", "-q"),
        ("systemctl", "daemon-reload"),
        ("systemctl", "start", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "show", "-P", "MainPID", "nginx.service"),
        ("systemctl", "try-reload-or-restart", "nginx.service"),
        ("systemctl", "reset-failed", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "is-active", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "show", "-P", "Listen", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "is-active", "fcgi-a@1.service", "fcgi-a@2.service"),
    ]
    assert outcome.generation == 1 and len(outcome.commands) == 9


def test_failed_nginx_test_restores_files_and_runs_nothing_else(tmp_path: Path) -> None:
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    before, record_before = snapshot(tmp_path), read_record(tmp_path)
    runner = Recorder(tmp_path, fail_on=("nginx", "-T"))
    with pytest.raises(ApplyError, match="simulated failure"):
        apply_plan(live_plan(tmp_path, workers=3), tmp_path, runner=runner)
    assert runner.commands == [("nginx", "-T", "-q")]
    assert snapshot(tmp_path) == before
    assert read_record(tmp_path) == record_before


def test_a_conf_dir_nginx_does_not_include_fails_before_anything_runs(tmp_path: Path) -> None:
    """`nginx -t` passes on a config that never reads conf_dir; the routes would be dead."""
    runner = Recorder(tmp_path, nginx_includes=False)
    with pytest.raises(ApplyError) as failed:
        apply_plan(live_plan(tmp_path), tmp_path, runner=runner)
    assert (
        "nginx does not read /etc/nginx/conf.d/fcgicompose-upstream-a.conf: "
        "no include of /etc/nginx/conf.d/*.conf"
    ) in str(failed.value)
    assert runner.commands == [("nginx", "-T", "-q")]
    assert snapshot(tmp_path) == {}


def test_the_conf_dir_spelled_another_way_by_the_include_is_still_read(tmp_path: Path) -> None:
    runner = Recorder(tmp_path, nginx_spells="/etc/nginx/sites/../conf.d/")
    (tmp_path / "etc/nginx/sites").mkdir(parents=True)
    assert apply_plan(live_plan(tmp_path), tmp_path, runner=runner).generation == 1


def test_a_foreign_file_with_crlf_line_ends_before_ours_is_walked_over(tmp_path: Path) -> None:
    """run_command reads output with universal newlines; the files must be read the same way."""
    (tmp_path / "etc/nginx/conf.d").mkdir(parents=True)
    (tmp_path / "etc/nginx/conf.d/00-windows.conf").write_bytes(b"# edited on Windows\r\n\r\n")
    assert apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path)).generation == 1


def test_the_dump_walk_steps_over_file_texts_that_look_like_markers() -> None:
    """An nginx.conf flattened from an old `nginx -T` inlines stale copies of our files."""
    files = {
        "/etc/nginx/nginx.conf": (
            "# configuration file /etc/nginx/conf.d/fcgicompose-upstream-a.conf:\n"
            "upstream fcgicompose_a { server unix:/run/old.sock; }\n"
        ),
        "/etc/nginx/mime.types": "types { text/html html; }",
    }
    dump = "".join(f"# configuration file {name}:\n{text}\n" for name, text in files.items())
    assert files_in_nginx_dump(dump, files.get) == list(files)
    warned = "nginx: [warn] something\n" + dump.strip()
    assert files_in_nginx_dump(warned, files.get) == list(files)
    changed = {**files, "/etc/nginx/nginx.conf": "events {}\n"}
    assert files_in_nginx_dump(dump, changed.get) == []  # disagrees: nothing after counts
    assert files_in_nginx_dump("nginx: [emerg] no dump", files.get) == []


def test_output_that_is_not_utf8_is_read_not_a_crash() -> None:
    """`nginx -T` prints every config file; one in Latin-1 must not break apply."""
    result = run_command(["printf", "# caf\\351\\n"])
    assert result.returncode == 0 and result.output == "# caf\ufffd"


def test_failure_after_units_started_rolls_units_back(tmp_path: Path) -> None:
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    before = snapshot(tmp_path)
    runner = Recorder(tmp_path, fail_on=("systemctl", "try-reload-or-restart"))
    with pytest.raises(ApplyError, match="previous files and units were restored"):
        apply_plan(live_plan(tmp_path, workers=3), tmp_path, runner=runner)
    assert snapshot(tmp_path) == before
    after_failure = runner.commands[
        runner.commands.index(("systemctl", "try-reload-or-restart", "nginx.service")) + 1 :
    ]
    assert after_failure == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "stop", "fcgi-a@3.service", "fcgi-a@3.socket"),
        ("systemctl", "try-reload-or-restart", "nginx.service"),
    ]


def test_no_rollback_keeps_the_new_files(tmp_path: Path) -> None:
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    with pytest.raises(ApplyError, match="--no-rollback"):
        apply_plan(
            live_plan(tmp_path, mode="two"),
            tmp_path,
            runner=Recorder(tmp_path, ("systemctl", "try-restart")),
            rollback=False,
        )
    assert "MODE=two" in (tmp_path / "etc/systemd/system/fcgi-a@.service").read_text()


def test_service_change_restarts_only_services(tmp_path: Path) -> None:
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    runner = Recorder(tmp_path)
    apply_plan(live_plan(tmp_path, mode="two"), tmp_path, runner=runner)
    assert runner.commands == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "try-restart", "fcgi-a@1.service", "fcgi-a@2.service"),
        (
            "systemctl",
            "reset-failed",
            "fcgi-a@1.socket",
            "fcgi-a@1.service",
            "fcgi-a@2.socket",
            "fcgi-a@2.service",
        ),
        ("systemctl", "start", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "is-active", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "show", "-P", "Listen", "fcgi-a@1.socket", "fcgi-a@2.socket"),
        ("systemctl", "is-active", "fcgi-a@1.service", "fcgi-a@2.service"),
    ]


class CrashLooped(Recorder):
    """systemd after a crash loop: the service hit its start limit and failed its socket."""

    def __init__(self, root: Path, failed: set[str]) -> None:
        super().__init__(root)
        self.state = dict.fromkeys(failed, "failed")

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        verb, units = tuple(argv[1:2]), list(argv[2:])
        if tuple(argv[:1]) == ("systemctl",) and verb == ("is-active",):
            self.commands.append(tuple(argv))
            return CommandResult(
                tuple(argv), 0, "\n".join(self.state.get(u, "active") for u in units)
            )
        if verb == ("reset-failed",):
            self.state.update((u, "inactive") for u in units if self.state.get(u) == "failed")
        elif verb == ("start",):
            self.state.update((u, "active") for u in units)
            self.state.update((u.replace(".socket", ".service"), "active") for u in units)
        return super().__call__(argv)


def test_the_fix_for_a_crash_loop_brings_its_failed_sockets_back(tmp_path: Path) -> None:
    """Domain item 2: the socket a crash loop failed must not stay failed after the fix."""
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    failed = {"fcgi-a@1.socket", "fcgi-a@1.service", "fcgi-a@2.socket", "fcgi-a@2.service"}
    runner = CrashLooped(tmp_path, failed)
    apply_plan(live_plan(tmp_path, mode="fixed"), tmp_path, runner=runner)
    assert ("systemctl", "start", "fcgi-a@1.socket", "fcgi-a@2.socket") in runner.commands
    assert set(runner.state.values()) == {"active"}


def test_files_and_directories_get_their_modes_whatever_the_umask(tmp_path: Path) -> None:
    """Domain item 19: written with a set mode, never left as temporary files."""
    old = os.umask(0o077)
    try:
        apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "etc").rglob("*") if not p.is_symlink()]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes and all(mode in (0o644, 0o755) for mode in modes.values()), modes
    assert modes["etc/nginx/conf.d"] == 0o755
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".fcgicompose-tmp")]


def test_a_plan_made_before_another_apply_is_refused(tmp_path: Path) -> None:
    stale = live_plan(tmp_path)
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    with pytest.raises(Exception, match="generation 0 to 1"):
        apply_plan(stale, tmp_path, runner=Recorder(tmp_path))


def test_second_apply_waits_for_the_lock_then_fails_clearly(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        with pytest.raises(LockError, match="another fcgicompose is applying to this root"):
            apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path), lock_timeout=0.5)
        assert time.monotonic() - started >= 0.5
        assert snapshot(tmp_path) == {}
    finally:
        holder.kill()
        holder.wait()
    apply_plan(
        live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path), lock_timeout=5
    )  # free again


HOLD_LOCK = """
import sys, time
from pathlib import Path
from fcgicompose.apply import locked
with locked(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_reader_that_goes_away_cannot_stop_an_apply_half_way(tmp_path: Path) -> None:
    """`apply | head`: progress lines fail with EPIPE after daemon-reload; apply goes on."""
    runner = Recorder(tmp_path)
    lines: list[str] = []

    def progress(line: str) -> None:
        if len(lines) >= 3:
            raise BrokenPipeError(32, "Broken pipe")
        lines.append(line)

    outcome = apply_plan(live_plan(tmp_path), tmp_path, runner=runner, progress=progress)
    assert outcome.generation == 1
    assert ("systemctl", "daemon-reload") in runner.commands
    assert any(c[:2] == ("systemctl", "try-reload-or-restart") for c in runner.commands)
    assert not (tmp_path / "var/lib/fcgicompose/journal.json").exists()  # committed
    assert read_record(tmp_path)[0].generation == 1


class Killed(BaseException):
    """Stands for kill -9: the apply dies with no rollback of its own."""


def test_recovery_after_a_kill_during_the_runtime_steps_undoes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    before = snapshot(tmp_path)

    def dies(argv: Sequence[str]) -> CommandResult:
        if tuple(argv[:2]) == ("systemctl", "try-reload-or-restart"):
            raise Killed  # after daemon-reload and the start of worker 3
        return Recorder(tmp_path)(argv)

    monkeypatch.setattr("fcgicompose.apply._roll_back", lambda *args: None)  # killed: no rollback
    with pytest.raises(Killed):
        apply_plan(live_plan(tmp_path, workers=3), tmp_path, runner=dies)
    assert (tmp_path / "var/lib/fcgicompose/journal.json").exists()
    assert (tmp_path / "etc/systemd/system/sockets.target.wants/fcgi-a@3.socket").is_symlink()

    later = Recorder(tmp_path)
    assert recover(tmp_path, runner=later)
    assert snapshot(tmp_path) == before  # journal and runtime log gone, old files back
    assert later.commands == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "stop", "fcgi-a@3.service", "fcgi-a@3.socket"),
        ("systemctl", "try-reload-or-restart", "nginx.service"),
    ]
    assert not recover(tmp_path, runner=later)  # done once, nothing left to do


def test_a_runtime_log_without_a_journal_is_a_leftover_of_a_finished_apply(tmp_path: Path) -> None:
    apply_plan(live_plan(tmp_path), tmp_path, runner=Recorder(tmp_path))
    runtime_log = tmp_path / "var/lib/fcgicompose/journal-runtime.jsonl"
    runtime_log.write_text('{"kind": "start", "units": ["fcgi-a@1.socket"]}\n')
    assert not recover(tmp_path)  # no journal: an apply killed just after its commit
    assert not runtime_log.exists()
