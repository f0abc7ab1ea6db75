#!/usr/bin/python3
"""A small FastCGI responder that echoes what it was given, for tests.

Stdlib only, single file: it runs on the host and inside the bare Debian test container.

Activation (exactly one, see docs/domain.md item 3):
  --fd0         (default) the listening socket is fd 0: classic FastCGI, as systemd's
                StandardInput=socket passes it
  --listen-fds  systemd's sd_listen_fds protocol: LISTEN_PID must be our PID, LISTEN_FDS must
                be 1, the listening socket is fd 3

The response body is plain text, one `key=value` line each, values JSON-encoded where they come
from outside (so any byte is visible unambiguously):

  pid=<pid>
  activation=<fd0|listen-fds>
  worker=<json label or null>
  param.<NAME>=<json value>      every FastCGI param, sorted by name; duplicates kept, in order
  env.<NAME>=<json value>        FCGI_TEST_* variables and --echo-env names (null if unset)
  argv=<json list>
  stdin_bytes=<n>

Param names that are not plain `[A-Za-z0-9_.-]+` are printed JSON-quoted. Bytes that are not
UTF-8 are shown as \\udcXX escapes (surrogateescape), everything else non-ASCII as \\uXXXX.

Only log lines ever go to stderr and nothing to stdout: under StandardInput=socket, stdout and
stderr would otherwise be the FastCGI connection unless the unit redirects them to the journal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from types import FrameType

FCGI_VERSION_1 = 1
FCGI_BEGIN_REQUEST = 1
FCGI_ABORT_REQUEST = 2
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_DATA = 8
FCGI_GET_VALUES = 9
FCGI_GET_VALUES_RESULT = 10
FCGI_UNKNOWN_TYPE = 11

FCGI_RESPONDER = 1
FCGI_KEEP_CONN = 1

FCGI_REQUEST_COMPLETE = 0
FCGI_CANT_MPX_CONN = 1
FCGI_UNKNOWN_ROLE = 3

# What a web server may ask with GET_VALUES: we serve one connection and one request at a time.
CAPABILITIES = {b"FCGI_MAX_CONNS": b"1", b"FCGI_MAX_REQS": b"1", b"FCGI_MPXS_CONNS": b"0"}

# Record types a web server may send us; anything else gets FCGI_UNKNOWN_TYPE.
KNOWN_INPUT_TYPES = {
    FCGI_BEGIN_REQUEST,
    FCGI_ABORT_REQUEST,
    FCGI_PARAMS,
    FCGI_STDIN,
    FCGI_DATA,
    FCGI_GET_VALUES,
}

HEADER = struct.Struct(">BBHHBx")
MAX_CONTENT = 0xFFFF
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
LISTEN_FDS_START = 3
IDLE_TIMEOUT = 60.0  # a client idling on a kept connection must not pin this worker forever


class ProtocolError(Exception):
    """The peer sent something that is not FastCGI; drop the connection."""


def log(message: str) -> None:
    """Write one log line to stderr (the journal under systemd)."""
    sys.stderr.write(f"fcgi_responder[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def encode_record(rtype: int, request_id: int, content: bytes = b"") -> bytes:
    """Encode one record, padded to a multiple of 8 bytes as the spec recommends."""
    if len(content) > MAX_CONTENT:
        raise ValueError("record content too long")
    padding = -len(content) % 8
    header = HEADER.pack(FCGI_VERSION_1, rtype, request_id, len(content), padding)
    return header + content + b"\0" * padding


def encode_stream(rtype: int, request_id: int, data: bytes) -> bytes:
    """Encode a stream (STDOUT, ...) as records of at most 64 KiB plus the empty end record."""
    chunks = [data[i : i + MAX_CONTENT] for i in range(0, len(data), MAX_CONTENT)]
    return b"".join(encode_record(rtype, request_id, c) for c in chunks) + encode_record(
        rtype, request_id
    )


def encode_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Encode name-value pairs with 1-byte (<128) or 4-byte lengths."""

    def length(n: int) -> bytes:
        return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)

    return b"".join(length(len(k)) + length(len(v)) + k + v for k, v in pairs)


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Decode name-value pairs; raise ProtocolError on truncation."""
    pairs: list[tuple[bytes, bytes]] = []
    pos = 0

    def length() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ProtocolError("truncated name-value length")
        if data[pos] < 128:
            pos += 1
            return data[pos - 1]
        if pos + 4 > len(data):
            raise ProtocolError("truncated 4-byte name-value length")
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        return int(n) & 0x7FFFFFFF

    while pos < len(data):
        name_len = length()
        value_len = length()
        end = pos + name_len + value_len
        if end > len(data):
            raise ProtocolError("truncated name-value data")
        pairs.append((data[pos : pos + name_len], data[pos + name_len : end]))
        pos = end
    return pairs


def end_request(request_id: int, protocol_status: int, app_status: int = 0) -> bytes:
    """Encode FCGI_END_REQUEST."""
    return encode_record(
        FCGI_END_REQUEST, request_id, struct.pack(">IB3x", app_status, protocol_status)
    )


def read_exact(conn: socket.socket, n: int) -> bytes | None:
    """Read exactly n bytes; None on a clean EOF before the first byte."""
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("connection closed mid-record")
            return None
        buf += chunk
    return bytes(buf)


def read_records(conn: socket.socket) -> Iterator[tuple[int, int, bytes]]:
    """Yield (type, request_id, content) until the peer closes the connection."""
    while True:
        header = read_exact(conn, HEADER.size)
        if header is None:
            return
        version, rtype, request_id, content_len, padding = HEADER.unpack(header)
        if version != FCGI_VERSION_1:
            raise ProtocolError(f"unsupported FastCGI version {version}")
        body = read_exact(conn, content_len + padding) if content_len + padding else b""
        if body is None:
            raise ProtocolError("connection closed mid-record")
        yield rtype, request_id, body[:content_len]


def text(raw: bytes) -> str:
    """Decode bytes so that every byte survives (non-UTF-8 becomes a surrogate escape)."""
    return raw.decode("utf-8", "surrogateescape")


class Responder:
    """Serve FastCGI requests on a listening socket, one connection at a time."""

    def __init__(self, activation: str, worker: str | None, echo_env: list[str]) -> None:
        self.activation = activation
        self.worker = worker
        self.echo_env = echo_env

    def body(self, params: list[tuple[bytes, bytes]], stdin_len: int) -> bytes:
        """Render the echo body described in the module docstring."""
        lines = [
            f"pid={os.getpid()}",
            f"activation={self.activation}",
            f"worker={json.dumps(self.worker)}",
        ]
        for raw_name, raw_value in sorted(params, key=lambda p: p[0]):  # stable: dups in order
            name = text(raw_name)
            shown = name if PLAIN_NAME.fullmatch(name) else json.dumps(name)
            lines.append(f"param.{shown}={json.dumps(text(raw_value))}")
        names = {n for n in os.environ if n.startswith("FCGI_TEST_")} | set(self.echo_env)
        for name in sorted(names):
            lines.append(f"env.{name}={json.dumps(os.environ.get(name))}")
        lines.append(f"argv={json.dumps(sys.argv)}")
        lines.append(f"stdin_bytes={stdin_len}")
        return ("\n".join(lines) + "\n").encode("ascii")  # json.dumps escapes non-ASCII

    def respond(self, request_id: int, params: list[tuple[bytes, bytes]], stdin: bytes) -> bytes:
        """Build the full reply to one request: STDOUT stream, then END_REQUEST."""
        head = b"Status: 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        out = head + self.body(params, len(stdin))
        return encode_stream(FCGI_STDOUT, request_id, out) + end_request(
            request_id, FCGI_REQUEST_COMPLETE
        )

    def serve_connection(self, conn: socket.socket) -> None:
        """Handle records on one connection until it closes or a request ends without KEEP_CONN."""
        active: int | None = None  # the one request id in progress (we do not multiplex)
        keep_conn = False
        params_raw = bytearray()
        params_done = False
        stdin = bytearray()
        for rtype, request_id, content in read_records(conn):
            if rtype not in KNOWN_INPUT_TYPES:
                conn.sendall(encode_record(FCGI_UNKNOWN_TYPE, 0, bytes([rtype]) + b"\0" * 7))
            elif rtype == FCGI_GET_VALUES:
                asked = decode_pairs(content)
                known = [(k, CAPABILITIES[k]) for k, _ in asked if k in CAPABILITIES]
                conn.sendall(encode_record(FCGI_GET_VALUES_RESULT, 0, encode_pairs(known)))
            elif rtype == FCGI_BEGIN_REQUEST:
                if len(content) < 8:
                    raise ProtocolError("short BEGIN_REQUEST body")
                role, flags = struct.unpack_from(">HB", content)
                if active is not None:
                    conn.sendall(end_request(request_id, FCGI_CANT_MPX_CONN))
                elif role != FCGI_RESPONDER:
                    conn.sendall(end_request(request_id, FCGI_UNKNOWN_ROLE))
                    if not flags & FCGI_KEEP_CONN:
                        return
                else:
                    active, keep_conn = request_id, bool(flags & FCGI_KEEP_CONN)
                    params_raw.clear()
                    stdin.clear()
                    params_done = False
            elif request_id != active:
                continue  # the spec says to ignore records for requests that are not active
            elif rtype == FCGI_ABORT_REQUEST:
                log(f"request {request_id} aborted by the web server")
                conn.sendall(end_request(request_id, FCGI_REQUEST_COMPLETE, app_status=1))
                active = None
                if not keep_conn:
                    return
            elif rtype == FCGI_PARAMS:
                if content:
                    params_raw += content
                else:
                    params_done = True
            elif rtype == FCGI_STDIN:
                if content:
                    stdin += content
                    continue
                if not params_done:
                    raise ProtocolError("STDIN ended before PARAMS")
                params = decode_pairs(bytes(params_raw))
                conn.sendall(self.respond(request_id, params, bytes(stdin)))
                uri = dict(params).get(b"REQUEST_URI", b"")
                log(f"served request {request_id} {text(uri)!r} keep_conn={keep_conn}")
                active = None
                if not keep_conn:
                    return
            # FCGI_DATA belongs to the Filter role: a responder ignores it.

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept connections one at a time, forever; a bad connection never kills the worker."""
        while True:
            conn, _ = listener.accept()
            try:
                with conn:
                    conn.settimeout(IDLE_TIMEOUT)
                    self.serve_connection(conn)
            except (OSError, ProtocolError) as exc:  # includes timeouts and a peer that vanished
                log(f"dropping connection: {exc}")


def listening_socket(fd: int) -> socket.socket:
    """Wrap fd as a socket and make sure it is a listening one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SystemExit(f"fcgi_responder: fd {fd} is not a socket ({exc.strerror})") from None
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise SystemExit(f"fcgi_responder: fd {fd} is a socket but not a listening one")
    return sock


def listen_fds_socket() -> socket.socket:
    """Take the socket passed by the sd_listen_fds protocol (fd 3), or exit with a clear message."""
    pid, fds = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if pid != str(os.getpid()):
        raise SystemExit(
            f"fcgi_responder: --listen-fds: LISTEN_PID={pid!r} is not our PID {os.getpid()};"
            " start me from a systemd socket unit (without StandardInput=socket)"
        )
    if fds != "1":
        raise SystemExit(f"fcgi_responder: --listen-fds: need LISTEN_FDS=1, got {fds!r}")
    return listening_socket(LISTEN_FDS_START)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Exit 0 right away; raising SystemExit interrupts a blocking accept()/recv()."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse options, find the listening socket, serve forever."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fd0", dest="activation", action="store_const", const="fd0")
    mode.add_argument("--listen-fds", dest="activation", action="store_const", const="listen-fds")
    parser.add_argument("--worker-label", metavar="TEXT")
    parser.add_argument("--echo-env", metavar="NAME", action="append", default=[])
    args = parser.parse_args(argv)
    activation: str = args.activation or "fd0"

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    listener = listening_socket(0) if activation == "fd0" else listen_fds_socket()
    log(f"ready, activation={activation}, listening on {listener.getsockname()!r}")
    Responder(activation, args.worker_label, args.echo_env).serve_forever(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
