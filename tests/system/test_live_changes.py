"""Changing a live host: 0 failed requests under a steady request loop, and only the units
that had to restart did (read from systemd's InvocationID, not from the tool's output)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from system.container import PROJECT_MOUNT, Container

SPEC_PATH = "/etc/fcgicompose/live.toml"
APP = f"""
[apps.APP]
command = ["/usr/bin/python3", "{PROJECT_MOUNT}/tests/support/fcgi_responder.py", "--fd0"]
workers = WORKERS
socket = "SOCKET"
socket_mode = "MODE"
environment = {{ FCGI_TEST_VERSION = "VERSION" }}
[apps.APP.route]
server_name = ["localhost"]
path = "/APP"
"""


def spec(apps: dict[str, tuple[int, str, str]], socket: str = "/run/fcgicompose/APP") -> str:
    text = 'version = 1\n[defaults]\nuser = "www-data"\n'
    for name, (workers, mode, version) in apps.items():
        text += (
            APP.replace("SOCKET", socket + "/{worker}.sock")
            .replace("APP", name)
            .replace("WORKERS", str(workers))
            .replace("MODE", mode)
            .replace("VERSION", version)
        )
    return text


def apply(ct: Container, text: str) -> dict[str, Any]:
    """Apply `text`; return apply's JSON report, checking one daemon-reload at most."""
    ct.write_file(SPEC_PATH, text)
    result = ct.run(
        ["python3", "-m", "fcgicompose", "apply", SPEC_PATH, "--auto-approve", "--json"],
        env={"PYTHONPATH": PROJECT_MOUNT, "NO_COLOR": "1"},
        check=False,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    if report["outcome"]:
        assert report["outcome"]["daemon_reloads"] <= 1
    return report


def invocations(ct: Container) -> dict[str, str]:
    """Every loaded fcgi-* unit that is active, with its InvocationID (new at each start)."""
    listed = ct.run(
        ["systemctl", "list-units", "--plain", "--no-legend", "--state=active", "fcgi-*"]
    )
    units = sorted(line.split()[0] for line in listed.stdout.splitlines() if line.strip())
    return {u: ct.run(["systemctl", "show", "-P", "InvocationID", u]).stdout.strip() for u in units}


class RequestLoop:
    """curl in a bounded loop inside the container, one status code per line."""

    def __init__(self, ct: Container, urls: list[str]) -> None:
        self.ct = ct
        script = (
            "rm -f /tmp/loop.stop; i=0; while [ ! -e /tmp/loop.stop ] && [ $i -lt 3000 ]; do "
            + "".join(
                f"curl -s -o /dev/null -m 5 -w '%{{http_code}}\\n' {u} >>/tmp/loop.log; "
                for u in urls
            )
            + "i=$((i+1)); done"
        )
        ct.run(["rm", "-f", "/tmp/loop.log"])
        self.process = subprocess.Popen(
            ["nsenter", "-t", str(ct.pid), "-a", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> list[str]:
        self.ct.run(["touch", "/tmp/loop.stop"])
        self.process.wait(timeout=60)
        return self.ct.read_file("/tmp/loop.log").split()


@pytest.fixture(scope="module")
def live(container: Container) -> Iterator[Container]:
    apply(container, spec({"alpha": (3, "0660", "1")}))
    yield container
    apply(container, "version = 1\n")


def change(
    ct: Container, apps: dict[str, tuple[int, str, str]], socket: str = "/run/fcgicompose/APP"
) -> tuple[set[str], set[str]]:
    """Apply under load; return (units restarted, units gone), asserting 0 failed requests."""
    urls = [f"http://localhost/{name}/" for name in ("alpha", "beta")]
    before = invocations(ct)
    loop = RequestLoop(ct, urls)
    time.sleep(1.0)  # the loop is running before the change starts
    apply(ct, spec(apps, socket))
    time.sleep(1.0)
    codes = loop.stop()
    after = invocations(ct)
    alpha_codes = codes[0::2]
    assert len(alpha_codes) > 20, "the request loop hardly ran"
    assert [c for c in alpha_codes if c != "200"] == [], f"failed requests: {sorted(set(codes))}"
    if "beta" in apps and "beta" in str(before):
        assert [c for c in codes[1::2] if c != "200"] == []
    restarted = {u for u in before if u in after and after[u] != before[u]}
    gone = set(before) - set(after)
    return restarted, gone


def test_scale_up_restarts_nothing(live: Container) -> None:
    restarted, gone = change(live, {"alpha": (5, "0660", "1")})
    assert (restarted, gone) == (set(), set())
    assert "fcgi-alpha@5.socket" in invocations(live)


def test_scale_down_stops_only_the_removed_workers(live: Container) -> None:
    restarted, gone = change(live, {"alpha": (2, "0660", "1")})
    assert restarted == set()
    assert {u for u in gone if u.endswith(".socket")} == {
        f"fcgi-alpha@{n}.socket" for n in (3, 4, 5)
    }


def test_environment_change_restarts_services_only(live: Container) -> None:
    restarted, gone = change(live, {"alpha": (2, "0660", "2")})
    assert restarted == {"fcgi-alpha@1.service", "fcgi-alpha@2.service"}
    assert gone == set()


def test_socket_mode_change_restarts_sockets_with_their_services(live: Container) -> None:
    restarted, _ = change(live, {"alpha": (2, "0620", "2")})
    assert {u for u in restarted if u.endswith(".socket")} == {
        "fcgi-alpha@1.socket",
        "fcgi-alpha@2.socket",
    }
    assert live.run(["stat", "-c", "%a", "/run/fcgicompose/alpha/1.sock"]).stdout.strip() == "620"


def test_moving_the_sockets_restarts_them_without_failing_a_request(live: Container) -> None:
    """nginx must reach a listening socket at every moment: old paths, then new ones."""
    restarted, _ = change(live, {"alpha": (2, "0620", "2")}, socket="/run/moved/APP")
    assert {u for u in restarted if u.endswith(".socket")} == {
        "fcgi-alpha@1.socket",
        "fcgi-alpha@2.socket",
    }
    assert live.exists("/run/moved/alpha/1.sock") and live.exists("/run/moved/alpha/2.sock")
    assert not live.exists("/run/fcgicompose/alpha/1.sock")
    restarted, _ = change(live, {"alpha": (2, "0620", "2")})  # and back
    assert live.exists("/run/fcgicompose/alpha/2.sock")
    assert not live.exists("/run/moved/alpha/1.sock")
    assert not live.exists("/run/moved/alpha/2.sock")


def test_adding_and_removing_an_app_leaves_the_other_alone(live: Container) -> None:
    restarted, gone = change(live, {"alpha": (2, "0620", "2"), "beta": (2, "0660", "1")})
    assert restarted == set() and gone == set()
    restarted, gone = change(live, {"alpha": (2, "0620", "2")})
    assert restarted == set()
    assert all(u.startswith("fcgi-beta@") for u in gone) and gone


def test_a_program_that_exits_at_once_is_rolled_back(live: Container) -> None:
    good = spec({"alpha": (2, "0620", "2")})
    apply(live, good)
    broken = good.replace(
        f'"/usr/bin/python3", "{PROJECT_MOUNT}/tests/support/fcgi_responder.py", "--fd0"',
        '"/bin/false"',
    )
    live.write_file(SPEC_PATH, broken)
    result = live.run(
        ["python3", "-m", "fcgicompose", "apply", SPEC_PATH, "--auto-approve"],
        env={"PYTHONPATH": PROJECT_MOUNT, "NO_COLOR": "1"},
        check=False,
        timeout=180,
    )
    assert result.returncode == 1, result.stdout
    assert "fcgi-alpha@1.service is" in result.stderr
    assert "previous files and units were restored" in result.stderr
    unit = live.read_file("/etc/systemd/system/fcgi-alpha@.service")
    assert "fcgi_responder.py" in unit and "/bin/false" not in unit
    statuses = [live.curl("http://localhost/alpha/")[0] for _ in range(6)]
    assert statuses == [200] * 6
    assert live.failed_units() == []
    apply(live, good)  # the record still says the good generation: nothing to do


def test_the_fix_for_a_crash_loop_brings_its_failed_sockets_back(live: Container) -> None:
    """Domain item 2: a crash loop trips the start limit, systemd fails the socket and it stops
    listening. Applying the fixed program must make it listen again, not roll the fix back."""
    good = spec({"alpha": (2, "0620", "2")}).replace(
        "workers = 2", "workers = 2\nstart_limit_burst = 2\nrestart_sec = 0", 1
    )
    # Up long enough to pass apply's check, then it crashes: a bug that shows under traffic.
    crashing = good.replace(
        f'"/usr/bin/python3", "{PROJECT_MOUNT}/tests/support/fcgi_responder.py", "--fd0"',
        '"/bin/sh", "-c", "sleep 3; exit 1"',
    )
    apply(live, crashing)
    sockets = ["fcgi-alpha@1.socket", "fcgi-alpha@2.socket"]
    deadline = time.monotonic() + 90
    while live.run(["systemctl", "is-active", *sockets], check=False).stdout.split() != [
        "failed",
        "failed",
    ]:
        assert time.monotonic() < deadline, "the crash loop never failed the sockets"
        live.curl("http://localhost/alpha/")
        time.sleep(0.5)
    report = apply(live, good)
    assert [a["kind"] for a in report["plan"]["actions"]][-2:] == ["relisten", "verify"]
    states = live.run(["systemctl", "is-active", *sockets], check=False).stdout.split()
    assert states == ["active", "active"]
    statuses = [live.curl("http://localhost/alpha/")[0] for _ in range(6)]
    assert statuses == [200] * 6
    assert live.failed_units() == []


def test_nginx_config_that_fails_the_test_is_rolled_back(live: Container) -> None:
    good = spec({"alpha": (2, "0620", "2")})
    apply(live, good)
    clash = "/etc/nginx/conf.d/zz-not-ours.conf"
    live.write_file(clash, "upstream fcgicompose_beta { server 127.0.0.1:9; }\n")
    try:
        live.write_file(SPEC_PATH, spec({"alpha": (2, "0620", "2"), "beta": (1, "0660", "1")}))
        result = live.run(
            ["python3", "-m", "fcgicompose", "apply", SPEC_PATH, "--auto-approve"],
            env={"PYTHONPATH": PROJECT_MOUNT, "NO_COLOR": "1"},
            check=False,
            timeout=180,
        )
        assert result.returncode == 1, result.stdout
        assert "`nginx -T -q` failed" in result.stderr and "duplicate upstream" in result.stderr
        assert not live.exists("/etc/nginx/conf.d/fcgicompose-upstream-beta.conf")
        assert not live.exists("/etc/systemd/system/fcgi-beta@.service")
        assert live.read_file(clash) == "upstream fcgicompose_beta { server 127.0.0.1:9; }\n"
        assert [live.curl("http://localhost/alpha/")[0] for _ in range(4)] == [200] * 4
        assert "fcgi-beta@1.socket" not in invocations(live)
    finally:
        live.run(["rm", "-f", clash])
    assert apply(live, good)["outcome"] is None  # the host is exactly the good generation
