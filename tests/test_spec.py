"""Spec loading: every invalid spec gives exact one-line errors at file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcgicompose.errors import SpecError
from fcgicompose.spec import Activation, parse_spec
from tests.conftest import SAMPLES

CASES = sorted((Path(__file__).parent / "spec_errors").glob("*.toml"))
MARKER = "# --- expected errors ---\n"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_spec_reports_every_problem_exactly(case: Path) -> None:
    text, expected = case.read_text().split(MARKER)
    with pytest.raises(SpecError) as caught:
        parse_spec(text, case.name)
    want = [line.removeprefix("# ") for line in expected.splitlines()]
    assert str(caught.value).splitlines() == want


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_samples_are_valid(sample: Path) -> None:
    spec = parse_spec(sample.read_text(), sample.name)
    assert spec.apps


def test_defaults_are_inherited_and_tables_merged() -> None:
    spec = parse_spec(
        """version = 1
[defaults]
user = "www-data"
environment = { A = "1", B = "2" }
[apps.x]
command = ["/usr/bin/x"]
environment = { B = "3" }
activation = "listen-fds"
[apps.y]
command = ["/usr/bin/y"]
user = "y"
""",
        "t.toml",
    )
    x, y = spec.apps["x"], spec.apps["y"]
    assert (x.user, dict(x.environment), x.activation) == (
        "www-data",
        {"A": "1", "B": "3"},
        Activation.LISTEN_FDS,
    )
    assert (y.user, dict(y.environment), y.activation) == (
        "y",
        {"A": "1", "B": "2"},
        Activation.FD0,
    )


def test_default_socket_is_under_run_per_app() -> None:
    spec = parse_spec(
        'version = 1\n[apps.w]\ncommand = ["/w"]\nuser = "u"\nworkers = 2\n', "t.toml"
    )
    assert [spec.apps["w"].socket_path(n) for n in (1, 2)] == [
        "/run/fcgicompose/w/1.sock",
        "/run/fcgicompose/w/2.sock",
    ]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["/usr/bin/spawn-fcgi", "-F", "4"], "spawn-fcgi forks workers"),
        (["/usr/sbin/fcgiwrap", "-s", "unix:/run/x.sock"], "bind its own socket"),
        (["/usr/bin/app", "--daemonize"], "daemonize"),
        ([], "must name the program"),
    ],
)
def test_commands_that_break_socket_activation_are_rejected(
    command: list[str], message: str
) -> None:
    words = ", ".join(f'"{w}"' for w in command)
    with pytest.raises(SpecError, match=message):
        parse_spec(f'version = 1\n[apps.a]\ncommand = [{words}]\nuser = "u"\n', "t.toml")


@pytest.mark.parametrize("version", ["", "version = 2\n"])
def test_version_is_required_and_checked(version: str) -> None:
    with pytest.raises(SpecError, match=r"t\.toml:.*version"):
        parse_spec(version + '[apps.a]\ncommand = ["/a"]\nuser = "u"\n', "t.toml")


def test_unreadable_spec_is_one_line(tmp_path: Path) -> None:
    from fcgicompose.spec import load_spec

    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "missing.toml")
    assert str(caught.value).endswith("missing.toml: cannot read spec: No such file or directory")
