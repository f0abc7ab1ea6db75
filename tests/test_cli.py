"""The command line as a user runs it: exit codes, idempotency, refusals, output formats."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcgicompose.cli import main
from tests.conftest import PROJECT, SAMPLES

MULTI = PROJECT / "samples" / "multi.toml"


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real entry point in a subprocess, without a terminal."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fcgicompose", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT,
        input=input or "",
        check=False,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file and link under root with its content or target (the lock file aside)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file() and path.name != "lock":
            found[str(path.relative_to(root))] = path.read_text()
    return found


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_apply_then_plan_shows_no_changes(sample: Path, tmp_path: Path) -> None:
    first = cli("plan", str(sample), "--root", str(tmp_path), "--detailed-exitcode")
    assert first.returncode == 2, first.stderr
    applied = cli("apply", str(sample), "--root", str(tmp_path), "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert "runtime actions skipped" in applied.stdout
    again = cli("plan", str(sample), "--root", str(tmp_path), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    before = tree(tmp_path)
    assert cli("apply", str(sample), "--root", str(tmp_path), "--auto-approve").returncode == 0
    assert tree(tmp_path) == before


def test_scaling_4_to_2_plans_exactly_the_removal_of_workers_3_and_4(tmp_path: Path) -> None:
    root, spec = tmp_path / "root", tmp_path / "multi.toml"
    root.mkdir()
    shutil.copy(MULTI, spec)
    assert cli("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
    spec.write_text(MULTI.read_text().replace("workers = 4", "workers = 2"))
    result = cli("plan", str(spec), "--root", str(root), "--json")
    plan = json.loads(result.stdout)
    changed = {(f["change"], f["path"]) for f in plan["files"] if f["change"] != "keep"}
    assert changed == {
        ("delete", "/etc/systemd/system/sockets.target.wants/fcgi-rt@3.socket"),
        ("delete", "/etc/systemd/system/sockets.target.wants/fcgi-rt@4.socket"),
        ("update", "/etc/nginx/conf.d/fcgicompose-upstream-rt.conf"),
    }
    upstream_diff = next(f["diff"] for f in plan["files"] if f["path"].endswith("upstream-rt.conf"))
    removed = [
        line
        for line in upstream_diff.splitlines()
        if line.startswith("-") and not line.startswith("---")
    ]
    assert removed == [
        '-    server "unix:/run/rt/rt3.sock" max_fails=3 fail_timeout=10s;',
        '-    server "unix:/run/rt/rt4.sock" max_fails=3 fail_timeout=10s;',
    ]
    assert [(a["kind"], a["units"]) for a in plan["actions"] if a["kind"] == "stop"] == [
        ("stop", ["fcgi-rt@3.socket", "fcgi-rt@3.service", "fcgi-rt@4.socket", "fcgi-rt@4.service"])
    ]


def test_apply_without_a_terminal_needs_auto_approve(tmp_path: Path) -> None:
    result = cli("apply", str(MULTI), "--root", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (
        "error: refusing to apply without confirmation: no terminal (pass --auto-approve)\n"
    )
    assert tree(tmp_path) == {}


def test_invalid_spec_gives_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        'version = 1\n[apps.rt]\ncommand = ["/x"]\nuser = "rt"\nworkers = 0\nsocket_mode = "0666"\n'
    )
    root = tmp_path / "root"
    root.mkdir()
    result = cli("apply", str(spec), "--root", str(root), "--auto-approve")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {spec}:5:11: apps.rt.workers: must be at least 1 (got 0)",
        f"error: {spec}:6:15: apps.rt.socket_mode: world-writable socket: any local user could "
        "send requests as the app (hint: use 0660 (owner and the nginx group))",
    ]
    assert list(root.iterdir()) == []


def test_a_file_the_tool_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    mine = tmp_path / "etc/nginx/conf.d/fcgicompose-upstream-rt.conf"
    mine.parent.mkdir(parents=True)
    mine.write_text("# hand-made\n")
    plan = cli("plan", str(MULTI), "--root", str(tmp_path))
    assert plan.returncode == 1
    assert (
        "✗ /etc/nginx/conf.d/fcgicompose-upstream-rt.conf: exists and was not written"
        in plan.stdout
    )
    for flags in ((), ("--force",)):
        result = cli("apply", str(MULTI), "--root", str(tmp_path), "--auto-approve", *flags)
        assert result.returncode == 1
        assert "not written by fcgicompose" in result.stderr
    assert mine.read_text() == "# hand-made\n"
    assert list(tmp_path.rglob("fcgi-*")) == []  # nothing else was written either


def test_hand_edits_are_drift_refused_unless_forced(tmp_path: Path) -> None:
    assert cli("apply", str(MULTI), "--root", str(tmp_path), "--auto-approve").returncode == 0
    service = tmp_path / "etc/systemd/system/fcgi-rt@.service"
    service.write_text(service.read_text() + "Nice=5\n")
    spec = tmp_path / "multi.toml"
    spec.write_text(MULTI.read_text().replace('memory_max = "1G"', 'memory_max = "2G"'))
    plan = cli("plan", str(spec), "--root", str(tmp_path))
    assert "! drift: /etc/systemd/system/fcgi-rt@.service: changed by hand" in plan.stdout
    refused = cli("apply", str(spec), "--root", str(tmp_path), "--auto-approve")
    assert refused.returncode == 1 and "use --force" in refused.stderr
    assert service.read_text().endswith("Nice=5\n")
    forced = cli("apply", str(spec), "--root", str(tmp_path), "--auto-approve", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "MemoryMax=2G" in service.read_text() and "Nice=5" not in service.read_text()


def test_removed_files_are_deleted_but_foreign_neighbours_stay(tmp_path: Path) -> None:
    assert cli("apply", str(MULTI), "--root", str(tmp_path), "--auto-approve").returncode == 0
    neighbour = tmp_path / "etc/nginx/conf.d/default.conf"
    neighbour.write_text("# not ours\n")
    empty = tmp_path / "empty.toml"
    empty.write_text("version = 1\n")
    assert cli("apply", str(empty), "--root", str(tmp_path), "--auto-approve").returncode == 0
    left = tree(tmp_path)
    assert "etc/nginx/conf.d/default.conf" in left
    assert [p for p in left if "fcgi" in p and not p.startswith("var/lib/fcgicompose/")] == []


def test_json_plan_is_machine_readable(tmp_path: Path) -> None:
    data = json.loads(cli("plan", str(MULTI), "--root", str(tmp_path), "--json").stdout)
    assert data["format"] == 1 and data["changes"] is True and data["live"] is False
    assert data["summary"]["create"] == len(data["files"]) == 20
    assert [a["kind"] for a in data["actions"]][:3] == ["nginx-test", "daemon-reload", "start"]


def test_graph_is_dot_with_dependency_edges() -> None:
    result = cli("graph", str(MULTI))
    assert result.returncode == 0
    assert result.stdout.startswith("digraph fcgicompose {")
    assert (
        '"/etc/systemd/system/fcgi-rt@.socket" -> '
        '"/etc/systemd/system/sockets.target.wants/fcgi-rt@1.socket";' in result.stdout
    )
    assert (
        '"/etc/nginx/conf.d/fcgicompose-upstream-rt.conf" -> '
        '"/etc/nginx/conf.d/fcgicompose-site-intranet.example.org-80.conf";' in result.stdout
    )


def test_colour_follows_no_color_and_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["plan", str(MULTI), "--root", str(tmp_path)]
    forced = runner.invoke(main, ["--color", *args])
    assert "\x1b[" in forced.output
    plain = runner.invoke(main, args, env={"NO_COLOR": "1"})
    assert "\x1b[" not in plain.output and plain.exit_code == 0


def test_internal_errors_are_short_and_point_to_details(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcgicompose.workflow

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(fcgicompose.workflow, "plan_for", broken)
    result = CliRunner().invoke(main, ["plan", str(MULTI), "--root", str(tmp_path)])
    assert result.exit_code == 3
    first = result.output.splitlines()[0]
    assert first.startswith("internal error: RuntimeError: boom (details: ")
    details = Path(first.split("(details: ")[1].rstrip(")"))
    assert "Traceback" in details.read_text() and "Traceback" not in result.output
    details.unlink()
    debug = CliRunner().invoke(main, ["--debug", "plan", str(MULTI), "--root", str(tmp_path)])
    assert "Traceback" in debug.output


def test_help_teaches_and_version_is_quick() -> None:
    assert "Typical use:" in cli("--help").stdout
    assert "--detailed-exitcode" in cli("plan", "--help").stdout
    assert cli("--version").stdout.startswith("fcgicompose, version ")


def test_unchanged_spec_is_planned_without_compiling_but_drift_still_shows(tmp_path: Path) -> None:
    assert cli("apply", str(MULTI), "--root", str(tmp_path), "--auto-approve").returncode == 0
    quick = json.loads(cli("plan", str(MULTI), "--root", str(tmp_path), "--json").stdout)
    assert quick["changes"] is False
    assert quick["notes"] == ["spec and fcgicompose unchanged since generation 1"]
    assert len(quick["files"]) == 20 and {f["change"] for f in quick["files"]} == {"keep"}
    # A hand edit makes the quick path step aside: the full plan reports the drift.
    site = tmp_path / "etc/nginx/conf.d/fcgicompose-site-wiki.example.org-80.conf"
    site.write_text(site.read_text() + "# edited\n")
    full = json.loads(cli("plan", str(MULTI), "--root", str(tmp_path), "--json").stdout)
    assert full["drift"] and full["changes"] is True
    site.write_text(site.read_text().replace("# edited\n", ""))
    # Another fcgicompose version may render differently: it compiles in full.
    record = tmp_path / "var/lib/fcgicompose/state.json"
    record.write_text(record.read_text().replace('"tool_version":"', '"tool_version":"0.0.0-'))
    other = json.loads(cli("plan", str(MULTI), "--root", str(tmp_path), "--json").stdout)
    assert other["changes"] is False and other["notes"] == []


def test_quick_plan_steps_aside_for_a_renamed_spec_or_a_missing_account(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    passwd = root / "etc/passwd"
    passwd.parent.mkdir(parents=True)
    passwd.write_text("www-data:x:33:33::/:/bin/false\nrt:x:100:100::/:/bin/false\n")
    (root / "etc/group").write_text("www-data:x:33:\nrt:x:100:\nwiki:x:101:\n")
    passwd.write_text(passwd.read_text() + "wiki:x:101:101::/:/bin/false\n")
    assert cli("apply", str(MULTI), "--root", str(root), "--auto-approve").returncode == 0
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(MULTI.read_text())
    plan = cli("plan", str(renamed), "--root", str(root), "--detailed-exitcode")
    assert plan.returncode == 2  # the headers name the spec file: every file changes
    passwd.write_text(passwd.read_text().replace("wiki:x:101:101::/:/bin/false\n", ""))
    plan = cli("plan", str(MULTI), "--root", str(root), "--detailed-exitcode")
    assert plan.returncode == 0
    assert "warning: " in plan.stderr and "user 'wiki' does not exist on the target" in plan.stderr


def test_apply_into_a_closed_pipe_still_applies_everything(tmp_path: Path) -> None:
    """The reader of stdout leaves after a few bytes; the apply is carried out in full."""
    root = tmp_path / "root"
    root.mkdir()
    command = (
        f"{sys.executable} -m fcgicompose apply {MULTI} --root {root} --auto-approve"
        ' | head -c 200 >/dev/null; echo "status=${PIPESTATUS[0]}"'
    )
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, cwd=PROJECT, check=False
    )
    assert result.stdout.strip() == "status=0", result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert cli("plan", str(MULTI), "--root", str(root), "--detailed-exitcode").returncode == 0


def test_a_spec_file_name_with_a_line_break_still_gives_one_line_per_problem(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "two\nlines.toml"
    spec.write_text('version = 1\n[apps.a]\ncommand = ["bin/a"]\nuser = ""\n')
    result = cli("validate", str(spec))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path}/two\\nlines.toml:3:11: apps.a.command: program must be an absolute "
        "path (hint: e.g. /usr/bin/a)",
        f"error: {tmp_path}/two\\nlines.toml:4:8: apps.a.user: invalid value '' "
        "(hint: a system user name)",
    ]


def test_a_byte_order_mark_is_not_a_toml_error(tmp_path: Path) -> None:
    spec = tmp_path / "bom.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + MULTI.read_bytes())
    result = cli("validate", str(spec))
    assert result.returncode == 0, result.stderr
