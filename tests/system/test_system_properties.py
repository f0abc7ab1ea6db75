"""Property test against the real programs: systemd and nginx read exactly what the spec says.

Hypothesis builds batches of apps with arbitrary accepted values in every field that reaches a
unit file or the nginx config; each batch is one spec, applied with `fcgicompose apply` in the
booted container. Then, for every app:

- systemd's parsed unit, read over D-Bus as JSON (`busctl --json`; `systemctl show` joins argv
  with spaces and is ambiguous): ExecStart= program and argv, Environment=, Description=,
  WorkingDirectory=, RuntimeDirectory=, User=, and the socket's Listen path;
- the running process: a request through nginx reaches the app, a python3 -c wrapper around
  tests/support/fcgi_responder.py started from the spec's own program path (a symlink to
  python3 made for it), which answers with its exact argv (sys.orig_argv), its environment and
  every FastCGI param nginx sent; so argv, environment and params are compared as the program
  received them, and the route's path, server names and socket path are proven by the request
  arriving at all;
- a file under each static directory (names with spaces, quotes, braces, semicolons...) is
  served at its location; `nginx -t` stays silent.

Derandomized and without shrinking (each example is an apply): the same batches every run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from system.container import PROJECT_MOUNT, Container

from fcgicompose.errors import SpecError
from fcgicompose.spec import App, Spec, parse_spec
from fuzz import reference as ref
from tests.test_properties import ENV_NAME, URL_PATH, texts

SPEC_PATH = "/etc/fcgicompose/properties.toml"
PROGRAMS = "/usr/local/lib/fcgiprop"  # symlinks to python3, one per app, named by the spec
DATA = "/srv/fcgiprop"  # working and static directories
APPS_PER_SPEC = 24
RESPONDER = f"{PROJECT_MOUNT}/tests/support/fcgi_responder.py"
# Runs the responder in this very process (LISTEN_PID stays right), labelled with what the
# process was started with: its whole argv and environment.
WRAPPER = (
    "import json, os, runpy, sys; "
    "label = json.dumps({'argv': sys.orig_argv, 'env': dict(os.environ)}); "
    f"sys.argv = [{RESPONDER!r}, '--ACTIVATION', '--worker-label', label]; "
    f"runpy.run_path({RESPONDER!r}, run_name='__main__')"
)


def fcgicompose(ct: Container, *args: str) -> str:
    result = ct.run(
        ["python3", "-m", "fcgicompose", *args],
        env={"PYTHONPATH": PROJECT_MOUNT, "NO_COLOR": "1"},
        check=False,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"fcgicompose {' '.join(args)} failed:\n{output}"
    return output


# ----------------------------------------------------------------------------- generation


def unit_text(text: str) -> str:
    """What the spec accepts in a value written unquoted into a unit (Description=)."""
    return text.lstrip(" \t").rstrip(" \t\\").rstrip(" \t")


def name_part(text: str) -> str:
    """One path component made of the text: no slash, not . or .., nothing systemd refuses."""
    part = unit_text(text.replace("/", ""))
    return part if part not in ("", ".", "..") else "x"


@st.composite
def live_apps(draw: st.DrawFn, number: int) -> dict[str, Any]:
    """An app whose every string is arbitrary but accepted, and which really runs."""
    n = number
    activation = draw(st.sampled_from(["fd0", "listen-fds"]))
    program_name = name_part(re.sub(r"[\"'\\\t]", "", draw(texts())))
    wd = f"{DATA}/wd{n}/" + name_part(draw(texts()))
    path = draw(st.from_regex(re.compile(URL_PATH), fullmatch=True))
    label = draw(st.from_regex(re.compile(r"[a-z0-9-]{1,10}"), fullmatch=True))
    static_dir = f"{DATA}/static{n}/" + name_part(draw(texts()).replace("$", "")) + "/"
    no_dollar = texts().map(lambda t: t.replace("$", ""))
    app: dict[str, Any] = {
        "command": [
            f"{PROGRAMS}/p{n}/{program_name}",
            "-c",
            WRAPPER.replace("ACTIVATION", activation),
            *draw(st.lists(texts(), max_size=4)),
        ],
        "activation": activation,
        "user": "www-data",
        "description": unit_text(draw(texts())),
        "working_directory": wd,
        "runtime_directory": f"fp{n}-"
        + draw(st.from_regex(r"[A-Za-z0-9._-]{0,8}", fullmatch=True)),
        "socket": f"/run/fcgiprop/p{n}-"
        + draw(st.from_regex(r"[A-Za-z0-9._@+,=%~-]{0,10}", fullmatch=True))
        + "{worker}.sock",
        "environment": draw(
            st.dictionaries(
                st.from_regex(re.compile(r"[A-Z0-9_]{0,8}"), fullmatch=True).map(
                    lambda s: "FCGI_TEST_" + s
                ),
                texts(),
                max_size=3,
            )
        ),
        "route": {
            "server_name": [f"p{n}.{label}.test", f"*.w{n}.test"],
            "path": path,
            "params": draw(
                st.dictionaries(
                    st.from_regex(re.compile(ENV_NAME), fullmatch=True), no_dollar, max_size=3
                )
            ),
            "static": {f"/static-p{n}/": static_dir},
        },
    }
    return app


@st.composite
def batches(draw: st.DrawFn) -> str:
    """One spec of APPS_PER_SPEC live apps, as TOML text."""
    apps = {f"p{n}": draw(live_apps(n)) for n in range(APPS_PER_SPEC)}
    return tomlkit.dumps({"version": 1, "apps": apps})


def handpicked() -> str:
    """A batch of the values that broke before: $ and ${} in the program path, %-specifiers,
    quotes, backslashes and tabs in argv, environment, params and directories."""
    nasty = ["$HOME", "${HOME}", "$$", "%i", "%%", '"q"', "'s'", "back\\slash", "tab\tx", ""]
    apps = {}
    for n, (program, word) in enumerate(
        [("py$HOME", "a b"), ("p${HOME}y", "${X}"), ("p$$y", "%n"), ("100% y", ";")]
    ):
        apps[f"p{n}"] = {
            "command": [
                f"{PROGRAMS}/p{n}/{program}",
                "-c",
                WRAPPER.replace("ACTIVATION", "fd0" if n % 2 else "listen-fds"),
                word,
                *nasty,
            ],
            "activation": "fd0" if n % 2 else "listen-fds",
            "user": "www-data",
            "description": f'{word} 100% "x" $Y \\ end',
            "working_directory": f"{DATA}/wd{n}/a b%c\\d",
            "runtime_directory": f"fp{n}-x",
            "socket": f"/run/fcgiprop/p{n}-a%b{{worker}}.sock",
            "environment": {f"FCGI_TEST_{i}": v for i, v in enumerate(nasty)},
            "route": {
                "server_name": [f"p{n}.hand.test", f"*.w{n}.test"],
                "path": "/" if n == 0 else f"/h.{n}",
                "params": {"P_TAB": "a\tb", "P_Q": 'x;y {z} "q" \\', "SCRIPT_NAME": "mine"},
                "static": {f"/static-p{n}/": f'{DATA}/static{n}/s p;{{}}"\\q/'},
            },
        }
    return tomlkit.dumps({"version": 1, "apps": apps})


# ----------------------------------------------------------------------------- reading back


def bus_label(name: str) -> str:
    """systemd's D-Bus object path label of a unit name (bus_label_escape())."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in name)


def bus_properties(ct: Container, units: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """{unit: {property: value}} read with busctl --json, all units in one container call."""
    script = []
    for unit, props in units.items():
        path = f"/org/freedesktop/systemd1/unit/{bus_label(unit)}"
        for interface, prop in props:
            script.append(
                f"echo '@@ {unit} {prop}'; busctl --json=short get-property "
                f"org.freedesktop.systemd1 {path} org.freedesktop.systemd1.{interface} {prop}"
            )
    out = ct.run(["sh", "-ec", "\n".join(script)], timeout=120).stdout
    found: dict[str, Any] = {}
    for block in out.split("@@ ")[1:]:
        head, _, body = block.partition("\n")
        unit, prop = head.split()
        found.setdefault(unit, {})[prop] = json.loads(body)["data"]
    return found


def echo(ct: Container, app: App) -> dict[str, Any]:
    """One request through nginx to the app; the responder's echo, decoded."""
    assert app.route is not None
    host = f"x.w{app.name[1:]}.test" if int(app.name[1:]) % 2 else app.route.server_name[0]
    prefix = "" if app.route.path == "/" else app.route.path
    status, body = ct.curl(f"http://localhost{prefix}/x/y?q=1", args=["-H", f"Host: {host}"])
    assert status == 200, (
        f"{app.name}: HTTP {status}\n{body}\n{ct.journal(f'fcgi-{app.name}@1.service')}"
    )
    params: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    for line in body.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("param."):
            params.setdefault(json.loads(key[6:]) if key[6:7] == '"' else key[6:], []).append(
                json.loads(value)
            )
        else:
            fields[key] = value
    label = json.loads(json.loads(fields["worker"]))
    return {"argv": label["argv"], "env": label["env"], "params": params}


def check_app(ct: Container, app: App, bus: dict[str, Any]) -> list[str]:
    problems: list[str] = []

    def differs(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{app.name}: {what}: got {got!r}, the spec says {want!r}")

    service = bus[f"fcgi-{app.name}@1.service"]
    ((path, argv, *_),) = service["ExecStart"]
    differs("ExecStart program", path, app.command[0])
    try:
        differs("ExecStart argv", [ref.substitute_environment(w) for w in argv], list(app.command))
    except ref.Unliteral as error:
        problems.append(f"{app.name}: ExecStart argv {argv!r}: {error}")
    environment = dict(item.split("=", 1) for item in service["Environment"])
    differs("Environment=", environment, {"FCGICOMPOSE_WORKER": "1", **app.environment})
    differs("WorkingDirectory=", service["WorkingDirectory"], app.working_directory)
    differs("RuntimeDirectory=", service["RuntimeDirectory"], [app.runtime_directory])
    differs("User=", service["User"], app.user)
    description = app.description or f"{app.name} FastCGI app"
    differs("Description=", service["Description"], f"{description} (worker 1)")
    socket = bus[f"fcgi-{app.name}@1.socket"]
    differs("ListenStream=", socket["Listen"], [["Stream", app.socket_path(1)]])

    seen = echo(ct, app)
    differs("argv of the process", seen["argv"], list(app.command))
    for name, value in {"FCGICOMPOSE_WORKER": "1", **app.environment}.items():
        differs(f"environment {name} of the process", seen["env"].get(name), value)
    assert app.route is not None
    for name, value in app.route.params.items():
        differs(f"FastCGI param {name}", seen["params"].get(name), [value])
    if "SCRIPT_NAME" not in app.route.params:
        script_name = "" if app.route.path == "/" else app.route.path
        differs("SCRIPT_NAME", seen["params"].get("SCRIPT_NAME"), [script_name])
    duplicated = sorted(name for name, values in seen["params"].items() if len(values) > 1)
    differs("params sent more than once", duplicated, [])
    (location,) = app.route.static
    status, body = ct.curl(
        f"http://localhost{location}f.txt", args=["-H", f"Host: {app.route.server_name[0]}"]
    )
    differs("static file", (status, body), (200, f"static {app.name}\n"))
    return problems


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def prepared(container: Container) -> Iterator[Container]:
    yield container
    # Leave the session container clean: an empty spec removes everything fcgicompose wrote.
    container.write_file(SPEC_PATH, "version = 1\n")
    fcgicompose(container, "apply", SPEC_PATH, "--auto-approve")
    container.run(["rm", "-rf", PROGRAMS, DATA])


def make_room(ct: Container, spec: Spec) -> None:
    """The program symlinks, working directories and static files the apps need."""
    script = ["set -eu"]
    args: list[str] = []

    def arg(value: str) -> str:
        args.append(value)
        return f'"${{{len(args)}}}"'

    for app in spec.apps.values():
        program = app.command[0]
        script.append(f"mkdir -p {arg(program.rsplit('/', 1)[0])}")
        script.append(f"ln -sfn /usr/bin/python3 {arg(program)}")
        script.append(f"mkdir -p {arg(app.working_directory)}")
        assert app.route is not None
        (directory,) = app.route.static.values()
        script.append(f"mkdir -p {arg(directory)}")
        script.append(f"printf 'static %s\\n' {arg(app.name)} > {arg(directory + 'f.txt')}")
    ct.run(["sh", "-c", "\n".join(script), "sh", *args])


@settings(
    max_examples=4,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(text=batches())
@example(text=handpicked())
def test_systemd_and_nginx_read_exactly_what_the_spec_says(prepared: Container, text: str) -> None:
    ct = prepared
    try:
        spec = parse_spec(text, "properties.toml")
    except SpecError as error:  # the generator makes accepted values only
        pytest.fail(f"generated spec refused:\n{error}\n{text}")
    make_room(ct, spec)
    ct.write_file(SPEC_PATH, text)
    output = fcgicompose(ct, "apply", SPEC_PATH, "--auto-approve")
    assert "Applied" in output, output
    nginx = ct.run(["nginx", "-t", "-q"], check=False)
    assert nginx.returncode == 0 and not (nginx.stdout + nginx.stderr).strip(), nginx.stderr
    service_props = [
        ("Service", p)
        for p in ("ExecStart", "Environment", "WorkingDirectory", "RuntimeDirectory", "User")
    ] + [("Unit", "Description")]
    units: dict[str, list[tuple[str, str]]] = {}
    for app in spec.apps.values():
        units[f"fcgi-{app.name}@1.service"] = service_props
        units[f"fcgi-{app.name}@1.socket"] = [("Socket", "Listen")]
    bus = bus_properties(ct, units)
    problems = [p for app in spec.apps.values() for p in check_app(ct, app, bus)]
    assert problems == [], "\n".join(problems)
    assert ct.failed_units() == []
