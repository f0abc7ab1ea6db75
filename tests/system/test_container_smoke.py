"""Prove the system-test infrastructure end to end, without fcgicompose.

Hand-written template socket/service units run tests/support/fcgi_responder.py behind the
container's real nginx: activation, socket ownership, round robin, and a worker killed with -9
coming back while requests keep succeeding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from support.fcgi_client import Echo, parse_echo
from system.container import DEFAULT_ROOTFS, PROJECT_MOUNT, CommandError, Container

T = TypeVar("T")
INSTANCES = ("1", "2", "3")
SOCKET_UNIT = """\
[Unit]
Description=smoke FastCGI socket %i

[Socket]
ListenStream=/run/smoke/smoke%i.sock
Accept=no
SocketUser=www-data
SocketGroup=www-data
SocketMode=0660
DirectoryMode=0755
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""
SERVICE_UNIT = f"""\
[Unit]
Description=smoke FastCGI worker %i
Requires=smoke@%i.socket
After=smoke@%i.socket

[Service]
User=www-data
ExecStart=/usr/bin/python3 {PROJECT_MOUNT}/tests/support/fcgi_responder.py --fd0 --worker-label %i
StandardInput=socket
StandardOutput=journal
StandardError=journal
Restart=on-failure
RestartSec=1
"""
NGINX_CONF = """\
upstream smoke {
    server unix:/run/smoke/smoke1.sock;
    server unix:/run/smoke/smoke2.sock;
    server unix:/run/smoke/smoke3.sock;
}
server {
    listen 80;
    server_name localhost;
    location / {
        include fastcgi_params;
        fastcgi_keep_conn off;
        fastcgi_pass smoke;
    }
}
"""
UNIT_DIR = "/etc/systemd/system"
NGINX_FILE = "/etc/nginx/conf.d/smoke.conf"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll probe until it returns something other than None; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def get(ct: Container) -> Echo:
    """One request through nginx; it must succeed and come from a responder."""
    status, body = ct.curl("http://localhost/hello?x=1")
    assert status == 200, f"HTTP {status}: {body}\n{ct.journal('nginx')}"
    return parse_echo(body)


def try_get(ct: Container) -> Echo | None:
    """Like get() but None while nginx still serves its old configuration."""
    status, body = ct.curl("http://localhost/hello?x=1")
    return parse_echo(body) if status == 200 and body.startswith("pid=") else None


@pytest.fixture
def smoke_units(container: Container) -> Iterator[Container]:
    """Install the smoke units and nginx config; remove every trace afterwards."""
    ct = container
    sockets = [f"smoke@{i}.socket" for i in INSTANCES]
    services = [f"smoke@{i}.service" for i in INSTANCES]
    try:
        ct.write_file(f"{UNIT_DIR}/smoke@.socket", SOCKET_UNIT)
        ct.write_file(f"{UNIT_DIR}/smoke@.service", SERVICE_UNIT)
        ct.run(["systemctl", "daemon-reload"])
        ct.run(["systemctl", "enable", "--now", *sockets])
        ct.write_file(NGINX_FILE, NGINX_CONF)
        ct.run(["nginx", "-t", "-q"])
        ct.run(["systemctl", "reload", "nginx"])
        yield ct
    finally:
        # Same order fcgicompose must use: out of nginx first, then units, then files.
        ct.run(["rm", "-f", NGINX_FILE])
        ct.run(["nginx", "-t", "-q"])
        ct.run(["systemctl", "reload", "nginx"])
        ct.run(["systemctl", "stop", *services, *sockets], check=False)
        ct.run(["systemctl", "disable", *sockets], check=False)
        ct.run(["rm", "-f", f"{UNIT_DIR}/smoke@.socket", f"{UNIT_DIR}/smoke@.service"])
        ct.run(["systemctl", "daemon-reload"])
        ct.run(["systemctl", "reset-failed"], check=False)


def test_container_is_isolated(container: Container) -> None:
    ct = container
    # --volatile=overlay: writes stay in the container, the cached rootfs is untouched.
    ct.write_file("/etc/fcgicompose-overlay-probe", "x\n")
    assert ct.read_file("/etc/fcgicompose-overlay-probe") == "x\n"
    assert not (DEFAULT_ROOTFS / "etc/fcgicompose-overlay-probe").exists()
    ct.run(["rm", "/etc/fcgicompose-overlay-probe"])
    # The project is bind-mounted read-only.
    assert ct.exists(f"{PROJECT_MOUNT}/tests/support/fcgi_responder.py")
    with pytest.raises(CommandError, match="Read-only file system"):
        ct.run(["touch", f"{PROJECT_MOUNT}/should-not-exist"])
    # --private-network: only a loopback device, so port 80 is ours.
    links = ct.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert ct.run(["systemctl", "is-active", "nginx"]).stdout.strip() == "active"
    assert ct.failed_units() == []


def test_template_sockets_behind_nginx_survive_kill_9(smoke_units: Container) -> None:
    ct = smoke_units
    for i in INSTANCES:
        assert ct.run(["systemctl", "is-active", f"smoke@{i}.socket"]).stdout.strip() == "active"
        stat = ct.run(["stat", "-c", "%U:%G %a %F", f"/run/smoke/smoke{i}.sock"]).stdout.strip()
        assert stat == "www-data:www-data 660 socket"
    assert ct.run(["stat", "-c", "%a", "/run/smoke"]).stdout.strip() == "755"

    first = wait_for("nginx to serve the new config", lambda: try_get(ct))
    assert first.activation == "fd0"
    assert first.params["REQUEST_URI"] == "/hello?x=1" and first.params["QUERY_STRING"] == "x=1"

    # Round robin across the three sockets: each instance is its own supervised process.
    pids: dict[str, int] = {}
    for _ in range(30):
        echo = get(ct)
        assert echo.worker is not None
        pids.setdefault(echo.worker, echo.pid)
        assert pids[echo.worker] == echo.pid, "an instance changed PID without being killed"
        if len(pids) == 3:
            break
    assert sorted(pids) == list(INSTANCES) and len(set(pids.values())) == 3
    for i, pid in pids.items():
        main_pid = ct.run(["systemctl", "show", "-P", "MainPID", f"smoke@{i}.service"]).stdout
        assert int(main_pid) == pid

    # kill -9 one worker: requests keep succeeding (the socket stays open and queues them) and
    # systemd starts a new process for that instance.
    victim = pids["2"]
    ct.run(["kill", "-9", str(victim)])

    def new_pid_for_2() -> int | None:
        echo = get(ct)  # every request must succeed, also while instance 2 is restarting
        return echo.pid if echo.worker == "2" and echo.pid != victim else None

    replacement = wait_for("instance 2 to come back with a new PID", new_pid_for_2)
    assert replacement not in pids.values()
    for _ in range(6):
        echo = get(ct)
        assert echo.worker is not None
        expected = replacement if echo.worker == "2" else pids[echo.worker]
        assert echo.pid == expected
    assert ct.failed_units() == [], ct.journal("smoke@2.service")
