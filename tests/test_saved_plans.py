"""Saved plans are applied exactly or refused when stale; rollback returns to a generation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.conftest import PROJECT
from tests.test_cli import cli, tree

MULTI = PROJECT / "samples" / "multi.toml"


def test_saved_plan_applies_exactly_that_plan(tmp_path: Path) -> None:
    root, saved = tmp_path / "root", tmp_path / "multi.plan"
    root.mkdir()
    made = cli("plan", str(MULTI), "--root", str(root), "--out", str(saved))
    assert made.returncode == 0 and saved.exists()
    assert oct(saved.stat().st_mode & 0o777) == "0o600"  # it holds environment values
    applied = cli("apply", str(saved), "--root", str(root))
    assert applied.returncode == 0, applied.stderr
    assert cli("plan", str(MULTI), "--root", str(root), "--detailed-exitcode").returncode == 0


def test_stale_plan_made_against_an_empty_root_is_refused(tmp_path: Path) -> None:
    root, saved = tmp_path / "root", tmp_path / "multi.plan"
    root.mkdir()
    assert cli("plan", str(MULTI), "--root", str(root), "--out", str(saved)).returncode == 0
    assert cli("apply", str(MULTI), "--root", str(root), "--auto-approve").returncode == 0
    before = tree(root)
    again = cli("apply", str(saved), "--root", str(root))
    assert again.returncode == 1
    assert "stale plan: fcgicompose's record changed (another apply ran)" in again.stderr
    assert "stale plan: /etc/systemd/system/fcgi-rt@.socket changed (absent → file:" in again.stderr
    assert tree(root) == before


def test_stale_plan_after_a_spec_edit_or_hand_edit_is_refused(tmp_path: Path) -> None:
    root, spec, saved = tmp_path / "root", tmp_path / "multi.toml", tmp_path / "p.plan"
    root.mkdir()
    shutil.copy(MULTI, spec)
    assert cli("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
    spec.write_text(MULTI.read_text().replace("workers = 4", "workers = 5"))
    assert cli("plan", str(spec), "--root", str(root), "--out", str(saved)).returncode == 0
    spec.write_text(MULTI.read_text().replace("workers = 4", "workers = 6"))
    refused = cli("apply", str(saved), "--root", str(root))
    assert refused.returncode == 1 and f"stale plan: the spec {spec} changed" in refused.stderr
    spec.write_text(MULTI.read_text().replace("workers = 4", "workers = 5"))
    upstream = root / "etc/nginx/conf.d/fcgicompose-upstream-rt.conf"
    upstream.write_text(upstream.read_text() + "# hand edit\n")
    refused = cli("apply", str(saved), "--root", str(root))
    assert refused.returncode == 1
    assert "stale plan: /etc/nginx/conf.d/fcgicompose-upstream-rt.conf changed" in refused.stderr


def test_rollback_restores_the_previous_generation_byte_for_byte(tmp_path: Path) -> None:
    root, spec = tmp_path / "root", tmp_path / "multi.toml"
    root.mkdir()
    shutil.copy(MULTI, spec)
    assert cli("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
    generation_1 = tree(root)
    spec.write_text(MULTI.read_text().replace("workers = 4", "workers = 2").replace("1G", "2G"))
    assert cli("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
    assert tree(root) != generation_1
    rolled = cli("rollback", "--root", str(root), "--auto-approve")
    assert rolled.returncode == 0, rolled.stderr
    assert "Rolling back from generation 2 to 1's spec." in rolled.stdout
    after = tree(root)
    managed = [p for p in generation_1 if not p.startswith("var/lib/fcgicompose/")]
    assert {p: after[p] for p in managed} == {p: generation_1[p] for p in managed}
    assert set(after) - set(generation_1) == {
        "var/lib/fcgicompose/generations/2/multi.toml",
        "var/lib/fcgicompose/generations/3/multi.toml",
    }
    state_dir = root / "var/lib/fcgicompose"
    assert oct(os.stat(state_dir).st_mode & 0o777) == "0o700"


def test_rollback_without_history_says_so(tmp_path: Path) -> None:
    result = cli("rollback", "--root", str(tmp_path), "--auto-approve")
    assert result.returncode == 1
    assert result.stderr == "error: no previous generation to roll back to\n"


def test_rollback_checks_the_accounts_like_any_apply(tmp_path: Path) -> None:
    root, spec = tmp_path / "root", tmp_path / "one.toml"
    root.mkdir()
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "www-data:x:33:33::/:/bin/false\nold:x:900:900::/:/bin/false\n"
    )
    (root / "etc/group").write_text("www-data:x:33:\nold:x:900:\n")
    app = '[apps.a]\ncommand = ["/usr/bin/a"]\nuser = "USER"\n'
    spec.write_text("version = 1\n" + app.replace("USER", "old"))
    assert cli("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
    spec.write_text("version = 1\n" + app.replace("USER", "www-data"))
    assert cli("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
    (root / "etc/passwd").write_text("www-data:x:33:33::/:/bin/false\n")  # `old` was removed
    before = tree(root)
    rolled = cli("rollback", "--root", str(root), "--auto-approve")
    assert rolled.returncode == 1
    assert "apps.a.user: user 'old' does not exist on the target" in rolled.stderr
    assert tree(root) == before
