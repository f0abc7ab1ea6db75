"""What a production root can throw at fcgicompose: odd file types, garbage state, symlinks out,
and refusals that must leave no trace. Each answer is one clean line and the right exit code."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fcgicompose.state import all_as_recorded, read_accounts, read_record
from tests.conftest import PROJECT
from tests.test_cli import cli, tree

MULTI = PROJECT / "samples" / "multi.toml"
UPSTREAM = "etc/nginx/conf.d/fcgicompose-upstream-rt.conf"


def applied(root: Path) -> None:
    result = cli("apply", str(MULTI), "--root", str(root), "--auto-approve")
    assert result.returncode == 0, result.stderr


def test_a_directory_where_a_managed_file_was_is_never_touched(tmp_path: Path) -> None:
    applied(tmp_path)
    (tmp_path / UPSTREAM).unlink()
    (tmp_path / UPSTREAM).mkdir()
    for flags in ((), ("--force",)):
        result = cli("apply", str(MULTI), "--root", str(tmp_path), "--auto-approve", *flags)
        assert result.returncode == 1, result.stderr
        assert (
            f"/{UPSTREAM}: is a directory, device or binary file where fcgicompose keeps a "
            "text file" in result.stderr
        )
    assert (tmp_path / UPSTREAM).is_dir()
    assert not (tmp_path / "var/lib/fcgicompose/journal.json").exists()


def test_an_unreadable_journal_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    applied(tmp_path)
    journal = tmp_path / "var/lib/fcgicompose/journal.json"
    before = tree(tmp_path)
    for garbage in ("{}", "[]", json.dumps({"paths": [{"path": "/x"}], "old_record": None})):
        journal.write_text(garbage)
        result = cli("recover", "--root", str(tmp_path))
        assert result.returncode == 1
        assert "the journal of an interrupted apply is unreadable" in result.stderr
        assert "Traceback" not in result.stderr
    journal.unlink()
    assert tree(tmp_path) == before


def test_a_bogus_record_is_a_clear_error(tmp_path: Path) -> None:
    applied(tmp_path)
    record = tmp_path / "var/lib/fcgicompose/state.json"
    record.write_text(record.read_text().replace('"kind":"nginx-site"', '"kind":"bogus"', 1))
    result = cli("plan", str(MULTI), "--root", str(tmp_path))
    assert result.returncode == 1
    assert "unreadable fcgicompose record: 'bogus' is not a valid Kind" in result.stderr


def test_refused_applies_leave_no_trace(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    refused = cli("apply", str(MULTI), "--root", str(root))  # no terminal, no --auto-approve
    assert refused.returncode == 1 and list(root.iterdir()) == []
    rollback = cli("rollback", "--root", str(root), "--auto-approve")
    assert rollback.returncode == 1 and list(root.iterdir()) == []


def test_a_state_dir_symlinked_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/fcgicompose").symlink_to(outside)
    result = cli("apply", str(MULTI), "--root", str(root), "--auto-approve")
    assert result.returncode == 1
    assert "leads outside" in result.stderr
    assert list(outside.iterdir()) == []
    assert not (root / "etc").exists()


def test_usage_errors_exit_1_not_2(tmp_path: Path) -> None:
    for args in (("plan", "--bogus"), ("plan", str(MULTI), "--root", str(MULTI)), ("nope",)):
        result = cli(*args)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr


def test_plan_out_is_private_and_never_the_spec(tmp_path: Path) -> None:
    saved = tmp_path / "p.plan"
    (tmp_path / "r").mkdir()
    saved.write_text("old")
    os.chmod(saved, 0o644)
    assert (
        cli("plan", str(MULTI), "--root", str(tmp_path / "r"), "--out", str(saved)).returncode == 0
    )
    assert oct(saved.stat().st_mode & 0o777) == "0o600"
    spec = tmp_path / "s.toml"
    spec.write_text(MULTI.read_text())
    same = cli("plan", str(spec), "--root", str(tmp_path / "r"), "--out", str(spec))
    assert same.returncode == 1 and "is the spec itself" in same.stderr
    assert spec.read_text() == MULTI.read_text()


def test_a_spec_mentioning_the_plan_format_is_still_a_spec(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text("# see fcgicompose-plan files\n" + MULTI.read_text())
    (tmp_path / "r").mkdir()
    result = cli("apply", str(spec), "--root", str(tmp_path / "r"), "--auto-approve")
    assert result.returncode == 0, result.stderr


def test_saved_plans_are_checked_against_the_accounts_of_the_target(tmp_path: Path) -> None:
    root, saved = tmp_path / "root", tmp_path / "p.plan"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    assert cli("plan", str(MULTI), "--root", str(root), "--out", str(saved)).returncode == 0
    result = cli("apply", str(saved), "--root", str(root))
    assert result.returncode == 1
    assert "user 'rt' does not exist on the target" in result.stderr
    assert not (root / "etc/systemd").exists()


def test_a_root_with_passwd_but_no_group_file_has_no_groups(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("www-data:x:33:33::/:/bin/false\n")
    accounts = read_accounts(tmp_path)
    assert accounts is not None
    users, groups = accounts
    assert "www-data" in users and "www-data" not in groups


def test_the_live_root_also_knows_accounts_only_nss_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """On /, a user from LDAP/SSSD is found by name although etc/passwd lacks it."""
    import pwd

    real = pwd.getpwnam

    def directory_user(name: str) -> pwd.struct_passwd:
        if name == "ldap-only":
            return real("root")
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", directory_user)
    accounts = read_accounts(Path("/"))
    assert accounts is not None
    users, _ = accounts
    assert "ldap-only" in users and "surely-not-a-user-x" not in users
    assert "ldap-only:" not in Path("/etc/passwd").read_text()  # found through NSS only


@pytest.mark.parametrize("command", [["plan"], ["apply", "--auto-approve"]], ids=["plan", "apply"])
def test_a_root_that_does_not_exist_is_refused_not_created(
    command: list[str], tmp_path: Path
) -> None:
    """A mistyped or unmounted staging root is not planned as empty and then filled."""
    missing = tmp_path / "not-mounted"
    result = cli(command[0], str(MULTI), "--root", str(missing), *command[1:])
    assert result.returncode == 1
    assert f"{missing} does not exist" in result.stderr
    assert not missing.exists()


LINK = "etc/systemd/system/sockets.target.wants/fcgi-rt@1.socket"


def test_a_record_edited_by_hand_gets_a_full_plan(tmp_path: Path) -> None:
    """The quick no-change plan trusts the record's list of files: not once someone edited it."""
    applied(tmp_path)
    record = tmp_path / "var/lib/fcgicompose/state.json"
    data = json.loads(record.read_text())
    del data["files"]["/" + LINK]
    record.write_text(json.dumps(data))
    (tmp_path / LINK).unlink()
    result = cli("plan", str(MULTI), "--root", str(tmp_path), "--detailed-exitcode")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"+ /{LINK}" in result.stdout


def _edit(root: Path) -> None:
    (root / UPSTREAM).write_text((root / UPSTREAM).read_text() + "# edited\n")


def _same_text_through_a_symlink(root: Path) -> None:
    copy = root / "copy.conf"
    copy.write_text((root / UPSTREAM).read_text())
    (root / UPSTREAM).unlink()
    (root / UPSTREAM).symlink_to(copy)


def _retarget(root: Path) -> None:
    (root / LINK).unlink()
    (root / LINK).symlink_to("/etc/systemd/system/fcgi-wiki@.socket")


def _link_made_a_file(root: Path) -> None:
    (root / LINK).unlink()
    (root / LINK).write_text("")


def _deleted(root: Path) -> None:
    (root / UPSTREAM).unlink()


def _directory(root: Path) -> None:
    (root / UPSTREAM).unlink()
    (root / UPSTREAM).mkdir()


@pytest.mark.parametrize(
    "tamper",
    [_edit, _same_text_through_a_symlink, _retarget, _link_made_a_file, _deleted, _directory],
)
def test_the_no_change_check_sees_every_kind_of_tampering(
    tmp_path: Path, tamper: Callable[[Path], None]
) -> None:
    """all_as_recorded is what lets plan skip compiling: it must miss nothing read_fact sees."""
    applied(tmp_path)
    entries = read_record(tmp_path)[0].entries
    assert all_as_recorded(tmp_path, entries)
    tamper(tmp_path)
    assert not all_as_recorded(tmp_path, entries)
