"""Run tests/support/fcgi_responder.py for real on the host and talk FastCGI to it.

The responder is what system tests put behind nginx, so its own behaviour must be pinned down
first: both activation protocols, the echo format, the protocol corners nginx relies on, and a
real nginx in front of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # works whatever pytest import mode the project picks
    sys.path.insert(0, str(TESTS_DIR))

from support.fcgi_client import (  # noqa: E402
    FCGI_CANT_MPX_CONN,
    FCGI_END_REQUEST,
    FCGI_PARAMS,
    FCGI_REQUEST_COMPLETE,
    FCGI_STDOUT,
    FCGI_UNKNOWN_ROLE,
    FCGI_UNKNOWN_TYPE,
    FcgiConnection,
    fcgi_request,
    parse_echo,
)

RESPONDER = TESTS_DIR / "support" / "fcgi_responder.py"
NGINX = Path("/usr/sbin/nginx")
GET = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "SCRIPT_NAME": "", "PATH_INFO": "/"}


class Worker:
    """A responder process and the socket path it serves."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: Path, stderr: Path) -> None:
        self.proc, self.sock, self.stderr = proc, sock, stderr

    def stop(self) -> int:
        """SIGTERM the process and return its exit code (it must exit promptly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=5)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: unix socket paths are limited to 107 bytes, pytest's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="fcgi-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listening_unix_socket(path: Path) -> socket.socket:
    """Create a listening unix socket, as systemd's socket unit would."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def start_fd0(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Worker:
    """Start the responder with a listening socket on fd 0 (what StandardInput=socket does)."""
    sock_path, err = tmp / "fd0.sock", tmp / "fd0.stderr"
    with listening_unix_socket(sock_path) as listener, err.open("wb") as err_file:
        proc = subprocess.Popen(
            [str(RESPONDER), "--fd0", *args],
            stdin=listener.fileno(),
            stdout=subprocess.PIPE,
            stderr=err_file,
            env=env,
        )
    return Worker(proc, sock_path, err)


def start_listen_fds(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Worker:
    """Start the responder under systemd-socket-activate: listening socket on fd 3, LISTEN_FDS=1.

    systemd-socket-activate execs the program (same PID) on the first connection, so the PID we
    started is the one that must answer.
    """
    sock_path, err = tmp / "lfds.sock", tmp / "lfds.stderr"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                "-l",
                str(sock_path),
                str(RESPONDER),
                "--listen-fds",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err_file,
            env=env,
        )
    deadline = time.monotonic() + 10
    while not sock_path.exists():
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, "systemd-socket-activate never created the socket"
        time.sleep(0.02)
    return Worker(proc, sock_path, err)


@pytest.fixture
def fd0_worker(short_tmp: Path) -> Iterator[Worker]:
    """A responder on fd 0 with a label and an FCGI_TEST_ variable."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FCGI_TEST_COLOUR": "blue green"}
    worker = start_fd0(short_tmp, "--worker-label", "w 1", "--echo-env", "PATH", env=env)
    yield worker
    worker.stop()


@pytest.fixture
def lfds_worker(short_tmp: Path) -> Iterator[Worker]:
    """A responder activated with the sd_listen_fds protocol."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate not installed")
    worker = start_listen_fds(short_tmp, "--echo-env", "LISTEN_FDS")
    yield worker
    worker.stop()


def test_fd0_echoes_params_env_argv_and_stdin(fd0_worker: Worker) -> None:
    long_value = "x" * 300  # > 127 bytes: 4-byte length encoding
    params = {
        **GET,
        "QUERY_STRING": "a=1&b=%20",
        "HTTP_X_ODD": 'quote" back\\slash\nnewline; {brace} $var é',
        "LONG": long_value,
        "N" * 200: "long name",
        "EMPTY": "",
    }
    body_in = bytes(range(256)) * 400  # 102400 bytes: needs several STDIN records
    headers, body = fcgi_request(fd0_worker.sock, params, body_in)
    assert headers == {"Status": "200 OK", "Content-Type": "text/plain; charset=utf-8"}
    echo = parse_echo(body)
    assert echo.pid == fd0_worker.proc.pid
    assert echo.activation == "fd0"
    assert echo.worker == "w 1"
    assert echo.params == params
    assert [name for name, _ in echo.param_list] == sorted(params)
    assert echo.env == {
        "FCGI_TEST_COLOUR": "blue green",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    assert echo.argv == [str(RESPONDER), "--fd0", "--worker-label", "w 1", "--echo-env", "PATH"]
    assert echo.stdin_bytes == len(body_in)
    assert body.isascii()  # json.dumps escapes everything: one line per key, always


def test_duplicate_params_and_odd_bytes_are_visible(fd0_worker: Worker) -> None:
    pairs = [(b"DUP", b"first"), (b"DUP", b"second"), (b"BIN", b"\xff\x00"), (b"a=b", b"c")]
    with FcgiConnection(fd0_worker.sock) as conn:
        resp = conn.request(pairs)
    echo = parse_echo(resp.body)
    assert echo.param_list == [
        ("BIN", "\udcff\x00"),
        ("DUP", "first"),
        ("DUP", "second"),
        ("a=b", "c"),
    ]
    assert b'param."a=b"="c"\n' in resp.body


def test_same_process_serves_every_connection(fd0_worker: Worker) -> None:
    pids = {parse_echo(fcgi_request(fd0_worker.sock, GET)[1]).pid for _ in range(5)}
    assert pids == {fd0_worker.proc.pid}


def test_connection_closed_after_request_without_keep_conn(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        resp = conn.request(GET)
        assert resp.protocol_status == FCGI_REQUEST_COMPLETE and resp.app_status == 0
        assert conn.peer_closed()


def test_keep_conn_serves_several_requests_on_one_connection(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        for request_id in (1, 2, 7):
            resp = conn.request(
                {**GET, "N": str(request_id)}, request_id=request_id, keep_conn=True
            )
            assert parse_echo(resp.body).params["N"] == str(request_id)
            assert not conn.peer_closed()
        conn.request(GET, request_id=3, keep_conn=False)
        assert conn.peer_closed()


def test_get_values_answers_only_known_names(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        values = conn.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "BOGUS"])
        assert values == {"FCGI_MAX_CONNS": "1", "FCGI_MAX_REQS": "1", "FCGI_MPXS_CONNS": "0"}
        assert parse_echo(conn.request(GET).body).pid == fd0_worker.proc.pid  # still usable


def test_unknown_record_type_gets_unknown_type(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        conn.send_record(42, 0, b"whatever")
        rec = conn.expect_record()
        assert (rec.type, rec.request_id, rec.content) == (
            FCGI_UNKNOWN_TYPE,
            0,
            bytes([42]) + b"\0" * 7,
        )
        assert conn.request(GET).protocol_status == FCGI_REQUEST_COMPLETE


def test_abort_request_ends_it(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        conn.begin_request(5, keep_conn=True)
        conn.send_record(FCGI_PARAMS, 5)
        conn.send_record(2, 5)  # FCGI_ABORT_REQUEST
        rec = conn.expect_record()
        assert rec.type == FCGI_END_REQUEST and rec.request_id == 5
        assert struct.unpack(">IB3x", rec.content)[1] == FCGI_REQUEST_COMPLETE
        assert parse_echo(conn.request(GET, request_id=6).body).pid == fd0_worker.proc.pid


def test_second_request_on_same_connection_is_refused_not_multiplexed(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        conn.begin_request(1, keep_conn=True)
        conn.begin_request(2, keep_conn=True)
        rec = conn.expect_record()
        assert (rec.type, rec.request_id) == (FCGI_END_REQUEST, 2)
        assert struct.unpack(">IB3x", rec.content)[1] == FCGI_CANT_MPX_CONN
        conn.send_stream(FCGI_PARAMS, 1, b"")
        conn.send_stream(5, 1, b"")  # FCGI_STDIN
        resp = conn.read_response(1)
        assert resp.protocol_status == FCGI_REQUEST_COMPLETE and b"pid=" in resp.body


def test_unknown_role_is_refused(fd0_worker: Worker) -> None:
    with FcgiConnection(fd0_worker.sock) as conn:
        conn.begin_request(1, role=2)  # FCGI_AUTHORIZER
        rec = conn.expect_record()
        assert rec.type == FCGI_END_REQUEST
        assert struct.unpack(">IB3x", rec.content)[1] == FCGI_UNKNOWN_ROLE
        assert conn.peer_closed()


def test_nothing_but_log_lines_leave_the_process(fd0_worker: Worker) -> None:
    """stdout must stay silent; stderr only carries prefixed log lines (it is the journal)."""
    for _ in range(3):
        fcgi_request(fd0_worker.sock, GET)
    with FcgiConnection(fd0_worker.sock) as conn:
        conn.send_record(FCGI_STDOUT, 9, b"garbage from a confused client")
    assert fd0_worker.stop() == 0
    assert fd0_worker.proc.stdout is not None and fd0_worker.proc.stdout.read() == b""
    lines = fd0_worker.stderr.read_text().splitlines()
    assert lines and all(
        line.startswith(f"fcgi_responder[{fd0_worker.proc.pid}]: ") for line in lines
    )


def test_sigterm_exits_zero_promptly(fd0_worker: Worker) -> None:
    fcgi_request(fd0_worker.sock, GET)
    start = time.monotonic()
    assert fd0_worker.stop() == 0
    assert time.monotonic() - start < 2


def test_listen_fds_activation(lfds_worker: Worker) -> None:
    first = parse_echo(fcgi_request(lfds_worker.sock, GET)[1])
    second = parse_echo(fcgi_request(lfds_worker.sock, GET)[1])
    assert first.activation == "listen-fds"
    assert first.pid == second.pid == lfds_worker.proc.pid  # socket-activate execs in place
    assert first.env == {"LISTEN_FDS": "1"}
    with FcgiConnection(lfds_worker.sock) as conn:
        assert conn.get_values(["FCGI_MPXS_CONNS"]) == {"FCGI_MPXS_CONNS": "0"}
    assert lfds_worker.stop() == 0


def test_listen_fds_refuses_without_listen_pid() -> None:
    env = {"PATH": "/usr/bin:/bin", "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    proc = subprocess.run(
        [str(RESPONDER), "--listen-fds"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "LISTEN_PID" in proc.stderr and "systemd socket unit" in proc.stderr


def test_fd0_refuses_when_stdin_is_not_a_listening_socket() -> None:
    proc = subprocess.run(
        [str(RESPONDER)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode != 0 and proc.stdout == ""
    assert "fd 0 is not a socket" in proc.stderr
    a, b = socket.socketpair()
    with a, b:
        proc = subprocess.run(
            [str(RESPONDER)],
            stdin=a.fileno(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    assert proc.returncode != 0 and "not a listening one" in proc.stderr


def free_port() -> int:
    """Ask the kernel for a free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    fastcgi_temp_path {prefix}/fastcgi;
    proxy_temp_path {prefix}/proxy;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param FCGI_TEST_FROM_NGINX "hello; {{world}}";
            fastcgi_pass unix:{sock};
        }}
    }}
}}
"""


@pytest.mark.skipif(not NGINX.exists(), reason="nginx not installed (apt-get install nginx-light)")
def test_real_nginx_in_front_of_the_responder(short_tmp: Path) -> None:
    # nginx workers run as nobody:nogroup: give them what SocketGroup=/SocketMode=0660 would.
    short_tmp.chmod(0o755)
    worker = start_fd0(short_tmp)
    os.chown(
        worker.sock, 0, int(subprocess.check_output(["getent", "group", "nogroup"]).split(b":")[2])
    )
    worker.sock.chmod(0o660)
    port = free_port()
    conf = short_tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=short_tmp, port=port, sock=worker.sock))
    nginx_cmd = [
        str(NGINX),
        "-p",
        f"{short_tmp}/",
        "-c",
        str(conf),
        "-e",
        str(short_tmp / "error.log"),
    ]
    subprocess.run([*nginx_cmd, "-t", "-q"], check=True, timeout=30)
    nginx = subprocess.Popen(nginx_cmd, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert nginx.poll() is None, (short_tmp / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)

        url = f"http://127.0.0.1:{port}/some/path?q=1"
        pids = set()
        for _ in range(3):
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
                echo = parse_echo(resp.read())
            pids.add(echo.pid)
            assert echo.params["REQUEST_METHOD"] == "GET"
            assert echo.params["REQUEST_URI"] == "/some/path?q=1"
            assert echo.params["QUERY_STRING"] == "q=1"
            assert echo.params["FCGI_TEST_FROM_NGINX"] == "hello; {world}"
        assert pids == {worker.proc.pid}  # one single-connection worker serves them all

        post = urllib.request.Request(url, data=b"x" * 5000, method="POST")
        with urllib.request.urlopen(post, timeout=10) as resp:
            echo = parse_echo(resp.read())
        assert echo.params["REQUEST_METHOD"] == "POST"
        assert echo.params["CONTENT_LENGTH"] == "5000"
        assert echo.stdin_bytes == 5000
    finally:
        nginx.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        worker.stop()
