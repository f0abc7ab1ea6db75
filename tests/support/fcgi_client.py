"""A small stdlib FastCGI client for tests, plus a parser for fcgi_responder's echo body.

Deliberately written separately from fcgi_responder.py (no shared encoder) so that a bug in one
is not mirrored by the other.

    headers, body = fcgi_request("/run/app.sock", {"REQUEST_METHOD": "GET"})
    echo = parse_echo(body)          # echo.pid, echo.params["REQUEST_METHOD"], ...

For protocol-level tests use FcgiConnection directly (keep-conn, GET_VALUES, raw records).
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

FCGI_BEGIN_REQUEST = 1
FCGI_ABORT_REQUEST = 2
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_GET_VALUES = 9
FCGI_GET_VALUES_RESULT = 10
FCGI_UNKNOWN_TYPE = 11

FCGI_RESPONDER = 1
FCGI_AUTHORIZER = 2
FCGI_KEEP_CONN = 1

FCGI_REQUEST_COMPLETE = 0
FCGI_CANT_MPX_CONN = 1
FCGI_OVERLOADED = 2
FCGI_UNKNOWN_ROLE = 3

_HEADER = struct.Struct(">BBHHBx")

ParamValue = str | bytes


class FcgiError(Exception):
    """The server broke the protocol or closed the connection early."""


@dataclass(frozen=True)
class Record:
    """One FastCGI record as received (padding stripped)."""

    type: int
    request_id: int
    content: bytes


@dataclass(frozen=True)
class FcgiResponse:
    """Everything a server sent back for one request."""

    headers: dict[str, str]
    body: bytes
    stdout: bytes  # headers + body, as sent
    stderr: bytes
    app_status: int
    protocol_status: int


def _bytes(value: ParamValue) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def encode_pairs(pairs: Iterable[tuple[ParamValue, ParamValue]]) -> bytes:
    """Encode FastCGI name-value pairs (1-byte lengths below 128, else 4-byte)."""
    out = bytearray()
    for name, value in pairs:
        k, v = _bytes(name), _bytes(value)
        for n in (len(k), len(v)):
            out += bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
        out += k + v
    return bytes(out)


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Decode FastCGI name-value pairs."""
    pairs: list[tuple[bytes, bytes]] = []
    lengths: list[int] = []
    pos = 0
    while pos < len(data):
        lengths.clear()
        for _ in range(2):
            if data[pos] < 128:
                lengths.append(data[pos])
                pos += 1
            else:
                lengths.append(struct.unpack_from(">I", data, pos)[0] & 0x7FFFFFFF)
                pos += 4
        k_len, v_len = lengths
        pairs.append((data[pos : pos + k_len], data[pos + k_len : pos + k_len + v_len]))
        pos += k_len + v_len
    return pairs


def split_cgi_response(stdout: bytes) -> tuple[dict[str, str], bytes]:
    """Split CGI-style output into a header dict (last one wins) and the body."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = stdout.partition(sep)
        if found:
            break
    else:
        raise FcgiError(f"no end of headers in response: {stdout[:200]!r}")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return headers, body


class FcgiConnection:
    """One client connection to a FastCGI server listening on a unix socket."""

    def __init__(self, sock_path: str | Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(sock_path))
        except OSError:
            self.sock.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def send_record(self, rtype: int, request_id: int, content: bytes = b"") -> None:
        """Send one record (content up to 64 KiB), padded to 8 bytes like nginx does."""
        padding = -len(content) % 8
        header = _HEADER.pack(1, rtype, request_id, len(content), padding)
        self.sock.sendall(header + content + b"\0" * padding)

    def send_stream(self, rtype: int, request_id: int, data: bytes) -> None:
        """Send a stream in 64 KiB-at-most records, then its empty terminating record."""
        for i in range(0, len(data), 0xFFFF):
            self.send_record(rtype, request_id, data[i : i + 0xFFFF])
        self.send_record(rtype, request_id)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                if buf:
                    raise FcgiError("connection closed in the middle of a record")
                return None
            buf += chunk
        return bytes(buf)

    def read_record(self) -> Record | None:
        """Read one record; None if the server closed the connection cleanly."""
        header = self._recv_exact(_HEADER.size)
        if header is None:
            return None
        version, rtype, request_id, length, padding = _HEADER.unpack(header)
        if version != 1:
            raise FcgiError(f"bad FastCGI version {version}")
        content = self._recv_exact(length + padding) if length + padding else b""
        if content is None:
            raise FcgiError("connection closed in the middle of a record")
        return Record(rtype, request_id, content[:length])

    def expect_record(self) -> Record:
        """Read one record; raise if the server closed the connection."""
        record = self.read_record()
        if record is None:
            raise FcgiError("server closed the connection")
        return record

    def peer_closed(self) -> bool:
        """True if the server has closed its end (EOF), False if it is still open."""
        old = self.sock.gettimeout()
        self.sock.settimeout(0.5)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except (TimeoutError, BlockingIOError):
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(old)

    def begin_request(
        self, request_id: int = 1, *, role: int = FCGI_RESPONDER, keep_conn: bool = False
    ) -> None:
        """Send FCGI_BEGIN_REQUEST."""
        flags = FCGI_KEEP_CONN if keep_conn else 0
        self.send_record(FCGI_BEGIN_REQUEST, request_id, struct.pack(">HB5x", role, flags))

    def read_response(self, request_id: int = 1) -> FcgiResponse:
        """Collect STDOUT/STDERR until END_REQUEST for request_id."""
        stdout, stderr = bytearray(), bytearray()
        while True:
            rec = self.expect_record()
            if rec.request_id != request_id:
                raise FcgiError(f"unexpected record {rec} while waiting for request {request_id}")
            if rec.type == FCGI_STDOUT:
                stdout += rec.content
            elif rec.type == FCGI_STDERR:
                stderr += rec.content
            elif rec.type == FCGI_END_REQUEST:
                app_status, protocol_status = struct.unpack(">IB3x", rec.content)
                headers, body = split_cgi_response(bytes(stdout)) if stdout else ({}, b"")
                return FcgiResponse(
                    headers, body, bytes(stdout), bytes(stderr), app_status, protocol_status
                )
            else:
                raise FcgiError(f"unexpected record type {rec.type}")

    def request(
        self,
        params: Mapping[str, ParamValue] | Iterable[tuple[ParamValue, ParamValue]],
        stdin: bytes = b"",
        *,
        request_id: int = 1,
        keep_conn: bool = False,
    ) -> FcgiResponse:
        """Run one complete responder request on this connection."""
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        self.begin_request(request_id, keep_conn=keep_conn)
        self.send_stream(FCGI_PARAMS, request_id, encode_pairs(pairs))
        self.send_stream(FCGI_STDIN, request_id, stdin)
        return self.read_response(request_id)

    def get_values(self, names: Iterable[str]) -> dict[str, str]:
        """Ask FCGI_GET_VALUES for names; return what the server answered."""
        self.send_record(FCGI_GET_VALUES, 0, encode_pairs((n, b"") for n in names))
        rec = self.expect_record()
        if rec.type != FCGI_GET_VALUES_RESULT or rec.request_id != 0:
            raise FcgiError(f"expected GET_VALUES_RESULT, got {rec}")
        return {k.decode(): v.decode() for k, v in decode_pairs(rec.content)}


def fcgi_request(
    sock_path: str | Path,
    params: Mapping[str, ParamValue],
    stdin: bytes = b"",
    *,
    timeout: float = 10.0,
) -> tuple[dict[str, str], bytes]:
    """Send one request on a fresh connection; return (CGI headers, body)."""
    with FcgiConnection(sock_path, timeout) as conn:
        resp = conn.request(params, stdin)
    if resp.protocol_status != FCGI_REQUEST_COMPLETE:
        raise FcgiError(f"request not completed: protocol_status={resp.protocol_status}")
    return resp.headers, resp.body


@dataclass(frozen=True)
class Echo:
    """fcgi_responder's response body, parsed."""

    pid: int
    activation: str
    worker: str | None
    params: dict[str, str]  # last value wins; see param_list for duplicates
    param_list: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str | None] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    stdin_bytes: int = 0


def parse_echo(body: bytes | str) -> Echo:
    """Parse the key=value lines written by tests/support/fcgi_responder.py."""
    text = body.decode("ascii") if isinstance(body, bytes) else body
    plain: dict[str, str] = {}
    param_list: list[tuple[str, str]] = []
    env: dict[str, str | None] = {}
    for line in text.splitlines():
        if line.startswith('param."'):  # a JSON-quoted name may itself contain "="
            name, end = json.JSONDecoder().raw_decode(line, len("param."))
            param_list.append((name, json.loads(line[end + 1 :])))
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not a key=value line: {line!r}")
        if key.startswith("param."):
            param_list.append((key[len("param.") :], json.loads(value)))
        elif key.startswith("env."):
            env[key[len("env.") :]] = json.loads(value)
        else:
            plain[key] = value
    return Echo(
        pid=int(plain["pid"]),
        activation=plain["activation"],
        worker=json.loads(plain["worker"]),
        params=dict(param_list),
        param_list=param_list,
        env=env,
        argv=json.loads(plain["argv"]),
        stdin_bytes=int(plain["stdin_bytes"]),
    )
