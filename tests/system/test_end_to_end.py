"""The main job on a real systemd and nginx: fcgicompose apply inside a booted container.

Two apps × 3 workers: the project's own FastCGI responder (classic fd 0) and Debian's fcgiwrap
(sd_listen_fds) running a CGI script. Requests go through the container's real nginx.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from system.container import PROJECT_MOUNT, Container

SPEC_PATH = "/etc/fcgicompose/site.toml"
GREETING = 'it\'s 100% "real" $HOME ${X} \\n'
SPEC = f"""#:schema {PROJECT_MOUNT}/schemas/fcgicompose.schema.json
version = 1

[defaults]
user = "www-data"
restart_sec = 1

[apps.echo]
description = "fcgicompose test responder"
command = ["/usr/bin/python3", "{PROJECT_MOUNT}/tests/support/fcgi_responder.py", "--fd0"]
activation = "fd0"
workers = WORKERS
environment = {{ FCGI_TEST_GREETING = {json.dumps(GREETING)} }}

[apps.echo.route]
server_name = ["localhost"]
path = "/echo"

[apps.cgi]
description = "CGI through fcgiwrap"
command = ["/usr/sbin/fcgiwrap"]
activation = "listen-fds"
workers = 3

[apps.cgi.route]
server_name = ["localhost"]
path = "/cgi"
params = {{ SCRIPT_FILENAME = "/srv/cgi/whoami.cgi" }}
"""
# fcgiwrap forks the script per request: the script's parent is the fcgiwrap worker.
CGI_SCRIPT = """#!/bin/sh
printf 'Content-Type: text/plain\\n\\n'
printf 'pid=%s\\n' "$PPID"
printf 'script_name=%s\\npath_info=%s\\n' "$SCRIPT_NAME" "$PATH_INFO"
# The sandbox as the script (a child of the worker) sees it.
sed -n 's/^\\(NoNewPrivs\\|Seccomp\\|CapBnd\\):[[:space:]]*/\\1=/p' /proc/self/status
if [ -e /proc/1/status ]; then echo init_visible=yes; else echo init_visible=no; fi
"""


def fcgicompose(ct: Container, *args: str, check: bool = True) -> str:
    result = ct.run(
        ["python3", "-m", "fcgicompose", *args],
        env={"PYTHONPATH": PROJECT_MOUNT, "NO_COLOR": "1"},
        check=False,
        timeout=180,
    )
    if check and result.returncode != 0:
        command = " ".join(args)
        output = f"{result.stdout}\n{result.stderr}"
        pytest.fail(f"fcgicompose {command} exited {result.returncode}:\n{output}")
    return result.stdout + result.stderr


def apply(ct: Container, workers: int = 3) -> str:
    ct.write_file(SPEC_PATH, SPEC.replace("WORKERS", str(workers)))
    return fcgicompose(ct, "apply", SPEC_PATH, "--auto-approve")


def plan_exit_code(ct: Container) -> int:
    result = ct.run(
        ["python3", "-m", "fcgicompose", "plan", SPEC_PATH, "--detailed-exitcode"],
        env={"PYTHONPATH": PROJECT_MOUNT, "NO_COLOR": "1"},
        check=False,
        timeout=120,
    )
    return result.returncode


def fields(body: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)


def pids_seen(ct: Container, url: str, requests: int = 18) -> list[str]:
    seen = []
    for _ in range(requests):
        status, body = ct.curl(url)
        assert status == 200, body
        seen.append(fields(body)["pid"])
    return seen


def main_pid(ct: Container, unit: str) -> int:
    return int(ct.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip())


@pytest.fixture(scope="module")
def applied(container: Container) -> Iterator[Container]:
    container.write_file("/srv/cgi/whoami.cgi", CGI_SCRIPT, mode=0o755)
    output = apply(container)
    assert "Applied:" in output, output
    yield container
    # Leave the session container clean: an empty spec removes everything fcgicompose wrote.
    container.write_file(SPEC_PATH, "version = 1\n")
    fcgicompose(container, "apply", SPEC_PATH, "--auto-approve")


def test_every_worker_of_every_app_answers_through_nginx(applied: Container) -> None:
    echo = pids_seen(applied, "http://localhost/echo/a/b?q=1")
    cgi = pids_seen(applied, "http://localhost/cgi/x")
    assert len(set(echo)) == 3, echo
    assert len(set(cgi)) == 3, cgi
    assert set(echo) == {str(main_pid(applied, f"fcgi-echo@{n}.service")) for n in (1, 2, 3)}
    assert set(cgi) == {str(main_pid(applied, f"fcgi-cgi@{n}.service")) for n in (1, 2, 3)}


def test_values_reach_the_program_unchanged(applied: Container) -> None:
    status, body = applied.curl("http://localhost/echo/a/b?q=1")
    got = fields(body)
    assert status == 200
    assert json.loads(got["env.FCGI_TEST_GREETING"]) == GREETING
    assert json.loads(got["param.SCRIPT_NAME"]) == "/echo"
    assert json.loads(got["param.PATH_INFO"]) == "/a/b"
    assert json.loads(got["param.QUERY_STRING"]) == "q=1"
    assert got["activation"] == "fd0"
    status, body = applied.curl("http://localhost/cgi/x/y")
    assert fields(body)["script_name"] == "/cgi" and fields(body)["path_info"] == "/x/y"


def test_the_client_cannot_choose_script_name(applied: Container) -> None:
    """A %0A in the URI decodes to a newline; the mount point is still SCRIPT_NAME."""
    status, body = applied.curl("http://localhost/echo/a%0Ab")
    got = fields(body)
    assert status == 200, body
    assert json.loads(got["param.SCRIPT_NAME"]) == "/echo"
    assert json.loads(got["param.PATH_INFO"]) == "/a\nb"


def test_the_bare_mount_point_redirects_with_its_query_string(applied: Container) -> None:
    written = "%{http_code} %{redirect_url}"
    result = applied.run(["curl", "-sS", "-o", "/dev/null", "-w", written, "localhost/echo?q=1"])
    assert result.stdout == "301 http://localhost/echo/?q=1"


def test_workers_and_the_programs_they_start_run_sandboxed(applied: Container) -> None:
    status, body = applied.curl("http://localhost/cgi/x")
    got = fields(body)
    assert status == 200, body
    assert got["NoNewPrivs"] == "1", body  # no_new_privileges
    assert got["Seccomp"] == "2", body  # system_call_filter: a seccomp filter is installed
    assert int(got["CapBnd"], 16) == 0, body  # drop_capabilities
    assert got["init_visible"] == "no", body  # protect_proc: root's PID 1 is hidden


def exposure(ct: Container, unit: str) -> float:
    out = ct.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert found, out
    return float(found.group(1))


def test_generated_services_are_less_exposed_than_debians_fcgiwrap(applied: Container) -> None:
    """The booted systemd's own score: ours beats the unit Debian ships for the same job."""
    debian = exposure(applied, "fcgiwrap.service")
    for unit in ("fcgi-cgi@1.service", "fcgi-echo@1.service"):
        assert exposure(applied, unit) < min(3.0, debian), unit


def test_socket_ownership_and_mode_let_nginx_in_and_nobody_else(applied: Container) -> None:
    out = applied.run(["stat", "-c", "%U %G %a", "/run/fcgicompose/echo/1.sock"]).stdout.split()
    assert out == ["www-data", "www-data", "660"]


def test_a_killed_worker_is_relaunched_and_requests_keep_succeeding(applied: Container) -> None:
    for unit in ("fcgi-echo@2.service", "fcgi-cgi@2.service"):
        url = "http://localhost/echo/" if "echo" in unit else "http://localhost/cgi/"
        pids_seen(applied, url, requests=6)  # make sure the worker is running
        victim = main_pid(applied, unit)
        assert victim > 0
        applied.run(["kill", "-9", str(victim)])
        statuses = [applied.curl(url)[0] for _ in range(12)]
        assert statuses == [200] * 12
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids_seen(applied, url, requests=3)
            now = main_pid(applied, unit)
            if now not in (0, victim):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"{unit} did not come back after kill -9:\n{applied.journal(unit)}")


def units_needing_daemon_reload(ct: Container) -> list[str]:
    """Loaded fcgi-* units whose file changed on disk since systemd read it."""
    listed = ct.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "fcgi-*"])
    units = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert units, "no fcgi-* units loaded"
    return [
        unit
        for unit in units
        if ct.run(["systemctl", "show", "-P", "NeedDaemonReload", unit]).stdout.strip() != "no"
    ]


def test_plan_after_apply_shows_no_changes(applied: Container) -> None:
    assert plan_exit_code(applied) == 0
    assert applied.failed_units() == []
    assert units_needing_daemon_reload(applied) == []


def test_scale_down_and_up_on_real_systemd(applied: Container) -> None:
    apply(applied, workers=2)
    state = applied.run(
        ["systemctl", "is-active", "fcgi-echo@3.socket"], check=False
    ).stdout.strip()
    assert state == "inactive"
    assert not applied.exists("/run/fcgicompose/echo/3.sock")
    assert not applied.exists("/etc/systemd/system/sockets.target.wants/fcgi-echo@3.socket")
    assert len(set(pids_seen(applied, "http://localhost/echo/"))) == 2
    assert plan_exit_code(applied) == 0
    assert units_needing_daemon_reload(applied) == []
    apply(applied, workers=3)
    assert len(set(pids_seen(applied, "http://localhost/echo/"))) == 3
    assert plan_exit_code(applied) == 0
