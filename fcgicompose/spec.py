"""The spec: TOML text -> frozen models, with every problem located at file:line:column."""

from __future__ import annotations

import difflib
import json
import posixpath
import re
import tomllib
import types
import typing
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Any

import attrs

from fcgicompose.errors import Problem, SpecError
from fcgicompose.locate import Locator
from fcgicompose.settings import StrEnum, matches, rule_of, setting

SPEC_VERSION = 1
WORKER_PLACEHOLDER = "{worker}"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
NO_VALUE: Mapping[str, str] = types.MappingProxyType({})

# Where nginx or a hardened service may not see a socket (PrivateTmp=, ProtectHome=).
# Where a socket must not go, and why.
_HIDDEN_FROM = "is invisible to services with {} (nginx among them)"
HIDDEN_SOCKET_DIRS = {
    "/tmp": _HIDDEN_FROM.format("PrivateTmp="),
    "/var/tmp": _HIDDEN_FROM.format("PrivateTmp="),
    "/dev/shm": "is world-writable scratch space: another user can take the path first",
    "/home": _HIDDEN_FROM.format("ProtectHome="),
    "/root": _HIDDEN_FROM.format("ProtectHome="),
    "/run/user": _HIDDEN_FROM.format("ProtectHome="),
}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# systemd's UTF-8 check refuses Unicode noncharacters ("String is not UTF-8 clean") and then
# ignores the whole assignment, e.g. Description= or ExecStart=.
_NONCHARACTER = re.compile(
    "[\ufdd0-\ufdef"
    + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000))
    + "]"
)
NAME_MAX = 255  # bytes in one path component
PATH_MAX = 4095  # bytes in a path, without the terminating NUL
_SAFE_PATH = r"/(?:[A-Za-z0-9._/@+,=%~-]|\{worker\})*"
_NAME = r"[a-z][a-z0-9_-]{0,47}"
_ACCOUNT = r"[a-z_][a-z0-9_-]{0,30}"  # systemd's strict rule: at most 31 characters


class Activation(StrEnum):
    """How the worker receives its listening socket from systemd."""

    FD0 = "fd0"  # classic FastCGI: the socket is stdin (StandardInput=socket)
    LISTEN_FDS = "listen-fds"  # sd_listen_fds(): fd 3 with LISTEN_FDS/LISTEN_PID


class Balance(StrEnum):
    """How nginx spreads requests over an app's workers."""

    ROUND_ROBIN = "round-robin"
    LEAST_CONN = "least-conn"
    IP_HASH = "ip-hash"


class ProtectSystem(StrEnum):
    """systemd ProtectSystem= levels."""

    NO = "no"
    YES = "yes"
    FULL = "full"
    STRICT = "strict"


class ProtectHome(StrEnum):
    """systemd ProtectHome= levels."""

    NO = "no"
    YES = "yes"
    READ_ONLY = "read-only"
    TMPFS = "tmpfs"


# ----------------------------------------------------------------------------- value checks


def _no_control(value: str) -> tuple[str, str] | None:
    if _CONTROL.search(value):
        char = _CONTROL.search(value).group(0)  # type: ignore[union-attr]
        return (f"contains the control character {char!r}", "use plain printable text")
    if _NONCHARACTER.search(value):
        code = ord(_NONCHARACTER.search(value).group(0))  # type: ignore[union-attr]
        return (
            f"contains the Unicode noncharacter U+{code:04X}, which systemd refuses",
            "remove it",
        )
    return None


def _path_lengths(value: str) -> tuple[str, str] | None:
    if len(value.encode()) > PATH_MAX:
        return (f"path longer than {PATH_MAX} bytes", "use a shorter path")
    if any(len(part.encode()) > NAME_MAX for part in value.split("/")):
        return (f"a path component is longer than {NAME_MAX} bytes", "use shorter names")
    return None


def _absolute_path(value: str) -> tuple[str, str] | None:
    if not value.startswith("/"):
        return ("must be an absolute path", "start it with /")
    trimmed = value.rstrip("/") or "/"  # a trailing slash is meaningful for nginx aliases
    if posixpath.normpath(trimmed) != trimmed:
        return ("must be a normalized path", f"write {posixpath.normpath(trimmed)!r}")
    return _path_lengths(value) or _no_control(value)


def _config_directory(value: str) -> tuple[str, str] | None:
    """A directory fcgicompose writes files into: one spelling, so paths compare equal."""
    if value == "/":
        return (
            "must not be the root directory",
            "name nginx's include directory, e.g. /etc/nginx/conf.d",
        )
    if value.endswith("/"):
        return ("must not end with /", f"write {value.rstrip('/')!r}")
    return None


def _unquoted_unit_value(value: str) -> tuple[str, str] | None:
    """Values written into a unit without quotes (Description=, WorkingDirectory=)."""
    if value != value.strip(" \t"):
        return (
            "starts or ends with whitespace, which systemd strips from unit values",
            "remove the surrounding whitespace",
        )
    if value.endswith("\\"):
        return (
            "ends with a backslash, which makes systemd join the next unit line to this one",
            "remove the trailing backslash",
        )
    return None


def _runtime_directory(value: str) -> tuple[str, str] | None:
    parts = value.split("/")
    if "." in parts or ".." in parts:
        return ("must not contain . or .. components", "name the directory plainly, e.g. rt")
    if parts[0] == "private":
        return ("systemd reserves 'private' for itself", "use another name")
    return _path_lengths(value)


_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _memory_size(value: str) -> tuple[str, str] | None:
    if value == "infinity":
        return None
    size = int(value.rstrip("KMGT")) * _SIZE_FACTORS[value.lstrip("0123456789")]
    if not 1 <= size < 2**64 - 1:  # systemd ignores MemoryMax= of 0 and of UINT64_MAX or more
        return ("out of range: systemd would ignore it", "use a size such as 512M, or infinity")
    return None


# nginx's default server_names_hash_bucket_size (64, Debian does not raise it) holds names of
# up to 46 characters; a longer one fails `nginx -t` once two server blocks share a port, as
# they do with Debian's default site on port 80.
MAX_SERVER_NAME = 46


def _server_name_length(value: str) -> tuple[str, str] | None:
    if len(value) > MAX_SERVER_NAME:
        return (
            f"longer than {MAX_SERVER_NAME} characters: nginx's default "
            "server_names_hash_bucket_size cannot hold it",
            "use a shorter name, or an alias such as *.example.org",
        )
    return None


def _own_account(value: str) -> tuple[str, str] | None:
    if value == "nobody":
        return (
            "systemd warns that running as nobody is not safe (every nobody process shares it)",
            "create a system account for the app",
        )
    if value == "root":
        return (
            "a worker running as root gives every request root's rights",
            "create a system account for the app",
        )
    return None


# Never served over HTTP: the whole file system, configuration, secrets, kernel interfaces.
PRIVATE_DIRS = ("/etc", "/root", "/boot", "/proc", "/sys", "/dev", "/run", "/var/lib/fcgicompose")


def _served_directory(value: str) -> tuple[str, str] | None:
    if value == "/":
        return ("would serve the whole file system", "name the directory of the static files")
    for private in PRIVATE_DIRS:
        if value.rstrip("/") == private or value.startswith(private + "/"):
            return (f"would serve files from {private} over HTTP", "copy the files elsewhere")
    return None


# Set by systemd or fcgicompose for the worker; a spec value would break activation or logs.
RESERVED_ENVIRONMENT = (
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "FCGICOMPOSE_WORKER",
)


def _socket_location(value: str) -> tuple[str, str] | None:
    for hidden, why in HIDDEN_SOCKET_DIRS.items():
        if value == hidden or value.startswith(hidden + "/"):
            return f"socket under {hidden} {why}", "put it under /run"
    if value.count(WORKER_PLACEHOLDER) > 1:
        return ("may contain {worker} only once", "e.g. /run/app/app{worker}.sock")
    if value.endswith("/"):
        return ("names a directory, not a socket file", "e.g. /run/app/{worker}.sock")
    if value.startswith("/var/run/"):
        return ("/var/run is a link to /run", f"write {value.removeprefix('/var')!r}")
    if not value.startswith("/run/"):
        # On tmpfs, cleaned at boot, where systemd creates the directory (DirectoryMode=).
        return ("sockets belong under /run", "e.g. /run/app/{worker}.sock")
    if value.startswith("/run/systemd/"):
        return ("/run/systemd belongs to systemd itself", "e.g. /run/app/{worker}.sock")
    return None


def _socket_mode(value: str) -> tuple[str, str] | None:
    mode = int(value, 8)
    if mode & 0o002:
        return (
            "world-writable socket: any local user could send requests as the app",
            "use 0660 (owner and the nginx group)",
        )
    if not mode & 0o020:
        return ("nginx (the socket's group) needs write permission", "use 0660")
    return None


def _executable(argv: tuple[str, ...]) -> tuple[str, str] | None:
    if not argv:
        return ("must name the program to run", 'e.g. ["/usr/sbin/fcgiwrap"]')
    if not argv[0].startswith("/"):
        return ("program must be an absolute path", f"e.g. /usr/bin/{posixpath.basename(argv[0])}")
    if argv[0].endswith("/"):
        return ("program path names a directory", "name the program file")
    if posixpath.normpath(argv[0]) != argv[0]:
        return ("program must be a normalized path", f"write {posixpath.normpath(argv[0])!r}")
    if re.search(r"[\"'\\\t]", argv[0]):
        # systemd's string_is_safe(): "Executable name contains special characters".
        return ("systemd refuses a program path with quotes, backslashes or tabs", "rename it")
    if _path_lengths(argv[0]):
        return _path_lengths(argv[0])
    program = posixpath.basename(argv[0])
    if program == "spawn-fcgi":
        return (
            "spawn-fcgi forks workers and never relaunches a dead one",
            "give the FastCGI program itself; fcgicompose runs one supervised worker per socket",
        )
    if re.fullmatch(r"php-fpm[0-9.]*", program):
        return (
            "php-fpm binds the sockets of its own pools and cannot take one from systemd",
            'run php-cgi (activation = "fd0"), or run php-fpm as its own service',
        )
    for i, word in enumerate(argv[1:], start=1):
        if word in ("--daemon", "--daemonize", "--fork", "-D"):
            return (
                f"argument {word!r} makes the program daemonize, which breaks socket activation",
                "run it in the foreground",
            )
        option, equals, value = word.partition("=")
        if not equals:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if word.startswith("unix:") or (
            option in _BIND_OPTIONS and re.match(r"unix:|tcp:|/|[\w.:\[\]]*:\d+$", value)
        ):
            return (
                f"argument {word!r} makes the program bind its own socket",
                "systemd passes the socket; remove the bind option",
            )
    return None


# Options with which FastCGI programs are told to listen themselves (fcgiwrap -s, plackup
# --listen, uwsgi --socket, ...); with a path or address they mean the program binds.
_BIND_OPTIONS = ("-s", "-b", "-l", "--bind", "--listen", "--socket", "--fastcgi-socket")


# What systemd 252's RestrictAddressFamilies= knows (af_from_name); it ignores others.
ADDRESS_FAMILIES = frozenset(
    (
        "AF_UNIX",
        "AF_LOCAL",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
        "AF_PACKET",
        "AF_AX25",
        "AF_IPX",
        "AF_APPLETALK",
        "AF_NETROM",
        "AF_BRIDGE",
        "AF_ATMPVC",
        "AF_X25",
        "AF_ROSE",
        "AF_DECnet",
        "AF_NETBEUI",
        "AF_SECURITY",
        "AF_KEY",
        "AF_ROUTE",
        "AF_ASH",
        "AF_ECONET",
        "AF_ATMSVC",
        "AF_RDS",
        "AF_SNA",
        "AF_IRDA",
        "AF_PPPOX",
        "AF_WANPIPE",
        "AF_LLC",
        "AF_IB",
        "AF_MPLS",
        "AF_CAN",
        "AF_TIPC",
        "AF_BLUETOOTH",
        "AF_IUCV",
        "AF_RXRPC",
        "AF_ISDN",
        "AF_PHONET",
        "AF_IEEE802154",
        "AF_CAIF",
        "AF_ALG",
        "AF_NFC",
        "AF_VSOCK",
        "AF_KCM",
        "AF_QIPCRTR",
        "AF_SMC",
        "AF_XDP",
        "AF_MCTP",
    )
)


def _address_family(value: str) -> tuple[str, str] | None:
    if value not in ADDRESS_FAMILIES:
        close = difflib.get_close_matches(value, sorted(ADDRESS_FAMILIES), n=1)
        return (
            "not an address family systemd knows",
            f"did you mean {close[0]}?" if close else "e.g. AF_UNIX, AF_INET, AF_INET6",
        )
    return None


def _no_nginx_variable(value: str) -> tuple[str, str] | None:
    if "$" in value:
        return ("'$' would be read by nginx as a variable", "nginx cannot escape '$'; remove it")
    return _no_control(value)


def _location_prefix(value: str) -> tuple[str, str] | None:
    if ".." in value.split("/"):
        return ("must not contain '..'", "write the plain prefix")
    if "." in value.split("/"):  # nginx normalizes /./ out of every URI: it would never match
        return ("must not contain '.' as a component", "write the plain prefix")
    return None


# ----------------------------------------------------------------------------- models

Key = tuple[str | int, ...]


@attrs.frozen
class Route:
    """How nginx reaches an app."""

    server_name: tuple[str, ...] = setting(
        "Host names of the nginx server block; `_` matches no host: a catch-all needs "
        "default_server.",
        ("_",),
        # One wildcard at most, first or last: nginx refuses "*.example.*".
        pattern=r"_|(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.\*",
        pattern_hint="a host name such as rt.example.org, *.example.org or _",
        checks=(_server_name_length,),
        example=["rt.example.org"],
    )
    listen: tuple[int, ...] = setting(
        "TCP ports the server block listens on.", (80,), minimum=1, maximum=65535
    )
    path: str = setting(
        "URL prefix the app is mounted at; SCRIPT_NAME is this prefix, PATH_INFO the rest.",
        "/",
        pattern=r"/|(/[A-Za-z0-9._~-]+)+",
        pattern_hint='a URL prefix without trailing slash, such as "/rt" (or "/")',
        checks=(_location_prefix,),
    )
    default_server: bool = setting(
        "Make this server block nginx's default for its ports: it answers every request whose "
        "Host no other server block names (then disable Debian's default site).",
        False,
    )
    balance: Balance = setting("How requests are spread over the workers.", Balance.ROUND_ROBIN)
    static: Mapping[str, str] = setting(
        "URL prefix -> directory served directly by nginx (alias).",
        NO_VALUE,
        # No . or .. component: nginx normalizes them out of every URI, it would never match.
        pattern=r"(/([A-Za-z0-9_~-]|\.[A-Za-z0-9_~-]|\.\.[A-Za-z0-9._~-])[A-Za-z0-9._~-]*)+/?",
        pattern_hint='a URL prefix such as "/rt/static/"',
        checks=(_absolute_path, _location_prefix, _no_nginx_variable, _served_directory),
        example={"/rt/NoAuth/images/": "/usr/share/request-tracker5/html/NoAuth/images/"},
    )
    params: Mapping[str, str] = setting(
        "Extra or overriding FastCGI params (literal values; each name is sent once).",
        NO_VALUE,
        pattern=r"[A-Za-z_][A-Za-z0-9_]*",
        pattern_hint="a parameter name such as SCRIPT_FILENAME",
        checks=(_no_nginx_variable,),
        example={"SCRIPT_FILENAME": "/usr/lib/cgit/cgit.cgi"},
    )
    keep_conn: bool = setting(
        "Keep FastCGI connections open; only for apps that multiplex connections.", False
    )
    max_fails: int = setting(
        "Failed attempts before nginx sets a worker aside for fail_timeout.",
        3,
        minimum=0,
        maximum=100,
    )
    fail_timeout: int = setting(
        "Seconds a failing worker is set aside.", 10, minimum=1, maximum=3600
    )
    read_timeout: int = setting(
        "Seconds nginx waits for the app's response.", 60, minimum=1, maximum=86400
    )

    @property
    def site(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Routes with equal sites share one nginx server block."""
        return (self.server_name, self.listen)


@attrs.frozen
class App:
    """One FastCGI program run as `workers` socket-activated, supervised instances."""

    name: str  # the key under [apps]; not a setting
    command: tuple[str, ...] = setting(
        "Program and arguments (argv list); the program must run in the foreground.",
        checks=(_executable,),
        example=["/usr/sbin/fcgiwrap"],
    )
    description: str = setting(
        "Human description, used in unit Description=.", "", checks=(_unquoted_unit_value,)
    )
    activation: Activation = setting(
        '"fd0": classic FastCGI, socket on stdin; "listen-fds": sd_listen_fds(), fd 3.',
        Activation.FD0,
        inheritable=True,
    )
    workers: int = setting(
        "Number of supervised worker instances (one socket each).", 1, minimum=1, maximum=512
    )
    socket: str = setting(
        "Socket path; {worker} becomes 1..workers. Default /run/fcgicompose/APP/{worker}.sock.",
        "",
        pattern=rf"({_SAFE_PATH})?",
        pattern_hint="use letters, digits and . _ / @ + , = % ~ - only",
        checks=(_absolute_path, _socket_location),
    )
    socket_mode: str = setting(
        "Socket file mode; owner is the app user, group the nginx group.",
        "0660",
        pattern=r"0?[0-7]{3}",
        pattern_hint='an octal mode such as "0660"',
        checks=(_socket_mode,),
        inheritable=True,
    )
    user: str = setting(
        "Account the workers run as (and owner of the sockets).",
        "",
        pattern=_ACCOUNT,
        pattern_hint="a system user name",
        checks=(_own_account,),
        inheritable=True,
    )
    group: str = setting(
        "Group the workers run as; the user's primary group if empty.",
        "",
        pattern=f"({_ACCOUNT})?",
        pattern_hint="a system group name",
        inheritable=True,
    )
    working_directory: str = setting(
        "Working directory of the workers.",
        "/",
        checks=(_absolute_path, _unquoted_unit_value),
        inheritable=True,
    )
    environment: Mapping[str, str] = setting(
        "Environment variables; [defaults] and app values are merged.",
        NO_VALUE,
        pattern=r"[A-Za-z_][A-Za-z0-9_]*",
        pattern_hint="a variable name: letters, digits, underscore",
        checks=(_no_control,),
        inheritable=True,
    )
    runtime_directory: str = setting(
        "Name of a directory under /run the service owns (RuntimeDirectory=); never the socket's.",
        "",
        pattern=r"([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?",
        pattern_hint="a relative name such as rt",
        checks=(_runtime_directory,),
    )
    restart_sec: int = setting(
        "Seconds before a crashed worker is restarted.",
        1,
        minimum=0,
        maximum=3600,
        inheritable=True,
    )
    start_limit_burst: int = setting(
        "Starts allowed within start_limit_interval_sec before systemd gives up.",
        10,
        minimum=1,
        maximum=10000,
        inheritable=True,
    )
    start_limit_interval_sec: int = setting(
        "Window for start_limit_burst, in seconds.",
        30,
        minimum=1,
        maximum=86400,
        inheritable=True,
    )
    memory_max: str = setting(
        "MemoryMax= per worker, e.g. 512M; empty for no limit.",
        "",
        pattern=r"([0-9]+[KMGT]?|infinity)?",
        pattern_hint="bytes with an optional K, M, G or T suffix",
        checks=(_memory_size,),
        inheritable=True,
    )
    tasks_max: int = setting(
        "TasksMax= per worker; 0 for systemd's default.",
        0,
        minimum=0,
        maximum=1000000,
        inheritable=True,
    )
    limit_nofile: int = setting(
        "LimitNOFILE= per worker; 0 for systemd's default.",
        0,
        minimum=0,
        maximum=1048576,
        inheritable=True,
    )
    # Sandboxing: on by default, each switch documented in docs/spec.md with what it writes.
    no_new_privileges: bool = setting("NoNewPrivileges=.", True, inheritable=True)
    private_tmp: bool = setting("PrivateTmp=.", True, inheritable=True)
    protect_system: ProtectSystem = setting("ProtectSystem=.", ProtectSystem.FULL, inheritable=True)
    protect_home: ProtectHome = setting("ProtectHome=.", ProtectHome.YES, inheritable=True)
    private_devices: bool = setting(
        "PrivateDevices=: only pseudo devices such as /dev/null in /dev.", True, inheritable=True
    )
    protect_kernel: bool = setting(
        "ProtectKernelTunables=, ProtectKernelModules=, ProtectKernelLogs=, "
        "ProtectControlGroups=, ProtectClock=, ProtectHostname=.",
        True,
        inheritable=True,
    )
    protect_proc: bool = setting(
        "ProtectProc=invisible: other users' processes are hidden in /proc.", True, inheritable=True
    )
    restrict_namespaces: bool = setting(
        "RestrictNamespaces=: the workers cannot create namespaces (sandboxes, containers).",
        True,
        inheritable=True,
    )
    system_call_filter: bool = setting(
        "SystemCallFilter=@system-service ~@privileged @resources, "
        "SystemCallArchitectures=native, LockPersonality=, RestrictRealtime=, RestrictSUIDSGID=.",
        True,
        inheritable=True,
    )
    drop_capabilities: bool = setting(
        "CapabilityBoundingSet= empty: no capabilities, even through setuid programs.",
        True,
        inheritable=True,
    )
    restrict_address_families: tuple[str, ...] = setting(
        "RestrictAddressFamilies=: the socket families the workers may open; empty: any.",
        ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"),
        pattern=r"AF_[A-Za-z0-9]+",
        pattern_hint="an address family such as AF_UNIX or AF_INET",
        checks=(_address_family,),
        inheritable=True,
    )
    memory_deny_write_execute: bool = setting(
        "MemoryDenyWriteExecute=; off by default because it breaks JIT compilers.",
        False,
        inheritable=True,
    )
    route: Route | None = setting("How nginx routes to the app; none: not routed.", None)

    def socket_path(self, worker: int) -> str:
        """The socket path of one worker."""
        return self.socket.replace(WORKER_PLACEHOLDER, str(worker))


@attrs.frozen
class Nginx:
    """The nginx the apps are served through."""

    user: str = setting(
        "Account nginx workers run as; sockets get its group.",
        "www-data",
        pattern=_ACCOUNT,
        pattern_hint="a system user name",
    )
    group: str = setting(
        "Group nginx workers are in (socket group); the user's name if empty.",
        "",
        pattern=f"({_ACCOUNT})?",
        pattern_hint="a system group name",
    )
    conf_dir: str = setting(
        "Directory nginx includes *.conf from, inside http {}; apply checks with nginx -T "
        "that nginx really reads the files it writes there.",
        "/etc/nginx/conf.d",
        checks=(_absolute_path, _config_directory),
    )

    @property
    def socket_group(self) -> str:
        """The group that gets write access to every socket."""
        return self.group or self.user


@attrs.frozen
class Spec:
    """A whole spec file."""

    source: str  # file name the spec was read from, for generated headers
    version: int
    nginx: Nginx
    apps: Mapping[str, App]
    file: str = attrs.field(default="", eq=False)  # as named on the command line, for messages
    locator: Locator | None = attrs.field(default=None, eq=False, repr=False)
    text: str = attrs.field(default="", eq=False, repr=False)  # kept for generations

    def problem(self, key: Key, message: str, hint: str = "") -> Problem:
        """A problem located at `key` in the spec file (for checks made after loading)."""
        line, column = (
            self.locator.find(tuple(p for p in key if isinstance(p, str)))
            if self.locator
            else (0, 0)
        )
        return Problem(message, self.file, line, column, format_key(key), hint)


TOP_LEVEL_KEYS = ("version", "defaults", "nginx", "apps")


def account_problems(spec: Spec, users: Container[str], groups: Container[str]) -> list[Problem]:
    """Users and groups the spec names that the target root does not have."""
    problems = []
    if spec.nginx.socket_group not in groups:
        key = ("nginx", "group" if spec.nginx.group else "user")
        problems.append(
            spec.problem(
                key,
                f"group {spec.nginx.socket_group!r} does not exist on the target",
                "create it, or set nginx.group to the group nginx runs as",
            )
        )
    for app in spec.apps.values():
        if app.user not in users:
            problems.append(
                spec.problem(
                    ("apps", app.name, "user"),
                    f"user {app.user!r} does not exist on the target",
                    "create the account before applying",
                )
            )
        if app.group and app.group not in groups:
            problems.append(
                spec.problem(
                    ("apps", app.name, "group"),
                    f"group {app.group!r} does not exist on the target",
                    "create the group before applying",
                )
            )
    return problems


# Keys people bring from hand-written units, with why fcgicompose has no such setting.
_NOT_SETTINGS = {
    "accept": "FastCGI programs accept connections themselves; fcgicompose always sets Accept=no",
    "exec_start_pre": "ExecStartPre= output would go into the FastCGI socket; fcgicompose omits it",
    "wanted_by": "socket-activated services are started by their sockets, not at boot",
    "type": "workers run in the foreground as Type=simple so LISTEN_PID stays right",
}


# ----------------------------------------------------------------------------- loading


def load_spec(path: Path, display_name: str | None = None) -> Spec:
    """Read and validate a spec file; raise SpecError listing every problem."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([Problem(f"cannot read spec: {error.strerror}", file=name)]) from None
    except UnicodeDecodeError as error:
        raise SpecError([Problem(f"not UTF-8 text ({error.reason})", file=name)]) from None
    # Some Windows editors start UTF-8 files with a byte order mark; TOML parsers choke on it.
    return parse_spec(text.removeprefix("\ufeff"), name)


def parse_spec(text: str, file: str) -> Spec:
    """Validate spec source text; `file` is used in messages and generated headers."""
    try:
        # tomllib is ten times faster than tomlkit; tomlkit, asked only when the text is
        # not TOML, says where (tomllib's errors carry no position before Python 3.14).
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError([_toml_syntax_problem(text, file, error)]) from None
    locator = Locator(text)
    builder = _Builder(file, locator)
    spec = builder.spec(raw, posixpath.basename(file))
    if builder.problems:
        raise SpecError(builder.problems)
    assert spec is not None
    return attrs.evolve(spec, file=file, locator=locator, text=text)


def _toml_syntax_problem(text: str, file: str, error: tomllib.TOMLDecodeError) -> Problem:
    import tomlkit  # only on this error path: it costs start-up time
    import tomlkit.exceptions

    try:
        tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as located:
        message = str(located).split(" at line ")[0]
        return Problem(f"invalid TOML: {message}", file=file, line=located.line, column=located.col)
    # The two parsers disagree (tomlkit accepts a few things TOML forbids): tomllib's message
    # ends "(at line L, column C)".
    message, line, column = str(error), 0, 0
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL)
    if found:
        message, line, column = found[1], int(found[2]), int(found[3])
    return Problem(f"invalid TOML: {message}", file=file, line=line, column=column)


def _parents(path: str) -> list[str]:
    """The directories above `path`, nearest first, without /."""
    parents = []
    while path.count("/") > 1:
        path = posixpath.dirname(path)
        parents.append(path)
    return parents


class _Invalid:
    """Marker for a value that was reported as a problem."""


INVALID = _Invalid()


def format_key(key: Key) -> str:
    """apps.rt.command[0] style, quoting parts that are not bare TOML keys."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            # A quoted key as TOML writes it, escapes included: a problem is one line.
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text


class _Builder:
    """Turns the raw TOML tree into models, collecting every problem on the way."""

    def __init__(self, file: str, locator: Locator) -> None:
        self.file = file
        self.locator = locator
        self.problems: list[Problem] = []
        # An app key whose value came from [defaults] is reported where it was written.
        self.origin: dict[Key, Key] = {}

    def problem(self, key: Key, message: str, hint: str = "") -> None:
        where = self.origin.get(key[:3], key[:3]) + key[3:] if len(key) >= 3 else key
        line, column = self.locator.find(tuple(p for p in where if isinstance(p, str)))
        found = Problem(message, self.file, line, column, format_key(where), hint)
        if found not in self.problems:
            self.problems.append(found)

    # -- the document ------------------------------------------------------------------

    def spec(self, raw: dict[str, Any], source: str) -> Spec | None:
        self.unknown_keys(raw, TOP_LEVEL_KEYS, ())
        version = raw.get("version")
        if version is None:
            self.problem(("version",), "missing", f"add `version = {SPEC_VERSION}` at the top")
        elif type(version) is not int or version != SPEC_VERSION:  # not 1.0, not true
            self.problem(
                ("version",),
                f"unsupported spec version {version!r}",
                f"this fcgicompose reads version {SPEC_VERSION}",
            )
        defaults = self.table(raw, "defaults", ())
        inheritable = [f.name for f in _settings(App) if rule_of(f).inheritable]  # type: ignore[union-attr]
        non_inheritable = {f.name for f in _settings(App)} - set(inheritable)
        for key in defaults:
            if key in non_inheritable:
                self.problem(
                    ("defaults", key),
                    "cannot be set in [defaults]",
                    f"set it per app: apps.NAME.{key}",
                )
        self.unknown_keys(
            {k: v for k, v in defaults.items() if k not in non_inheritable},
            inheritable,
            ("defaults",),
        )
        nginx = self.model(Nginx, self.table(raw, "nginx", ()), ("nginx",))
        apps: dict[str, App] = {}
        for name, app_raw in sorted(self.table(raw, "apps", ()).items()):
            app = self.app(name, app_raw, defaults)
            if app is not None:
                apps[name] = app
        if isinstance(nginx, Nginx):
            self.cross_check(apps, nginx)
        if self.problems or not isinstance(nginx, Nginx) or not isinstance(version, int):
            return None
        return Spec(source=source, version=version, nginx=nginx, apps=apps)

    def app(self, name: str, raw: Any, defaults: dict[str, Any]) -> App | None:
        key: Key = ("apps", name)
        if not re.fullmatch(_NAME, name):
            self.problem(
                key,
                f"app name {name!r} is not usable in unit and upstream names",
                "use lower-case letters, digits, - and _, starting with a letter",
            )
            return None
        if not isinstance(raw, dict):
            self.problem(key, "must be a table", f"write [apps.{name}]")
            return None
        merged = dict(raw)
        for setting_name, value in defaults.items():
            if setting_name not in raw:
                merged[setting_name] = value
                self.origin[(*key, setting_name)] = ("defaults", setting_name)
            elif isinstance(value, dict) and isinstance(raw[setting_name], dict):
                merged[setting_name] = {**value, **raw[setting_name]}
        if "user" not in merged:  # an empty user = "" is reported as an invalid value
            self.problem(
                (*key, "user"),
                "missing: no user to run the workers as",
                "set user here or in [defaults]",
            )
        app = self.model(App, merged, key, name=name)
        if not isinstance(app, App):
            return None
        if not app.socket:
            app = attrs.evolve(app, socket=f"/run/fcgicompose/{name}/{WORKER_PLACEHOLDER}.sock")
        longest = app.socket_path(app.workers).encode()
        if len(longest) > MAX_SOCKET_PATH:
            self.problem(
                (*key, "socket"),
                f"socket path {longest.decode()!r} is {len(longest)} bytes; "
                f"unix sockets allow {MAX_SOCKET_PATH}",
                "use a shorter directory under /run",
            )
        if app.workers > 1 and WORKER_PLACEHOLDER not in app.socket:
            self.problem(
                (*key, "socket"),
                f"all {app.workers} workers would share one socket path",
                "put {worker} in the path, e.g. /run/" + name + "/" + name + "{worker}.sock",
            )
        for variable in sorted(set(app.environment) & set(RESERVED_ENVIRONMENT)):
            self.problem(
                (*key, "environment", variable),
                f"{variable} is set for the worker by systemd or fcgicompose",
                "remove it from the spec",
            )
        if app.runtime_directory:
            runtime = "/run/" + app.runtime_directory
            if app.socket.startswith(runtime + "/"):
                self.problem(
                    (*key, "socket"),
                    f"socket is inside the service's runtime directory {runtime}, "
                    "which systemd deletes when the worker stops",
                    "put the socket in a directory of its own",
                )
        return app

    def cross_check(self, apps: Mapping[str, App], nginx: Nginx) -> None:
        """Checks that need more than one app in view."""
        socket_owner: dict[str, str] = {}
        for app in apps.values():
            for worker in range(1, app.workers + 1):
                path = app.socket_path(worker)
                owner = socket_owner.setdefault(path, app.name)
                if owner != app.name:
                    self.problem(
                        ("apps", app.name, "socket"),
                        f"socket {path} is also used by app {owner!r}",
                        "give each app its own socket directory",
                    )
                    break
        self.socket_layout(apps)
        routed = {name: app.route for name, app in apps.items() if app.route is not None}
        self.nginx_names(routed, nginx)
        site_of_pair: dict[tuple[str, int], tuple[str, Route]] = {}
        mounts: dict[tuple[tuple[str, ...], tuple[int, ...], str], str] = {}
        for name, route in routed.items():
            for pair in ((s, p) for s in route.server_name for p in route.listen):
                # nginx compares server names without regard to case.
                key = (pair[0].lower(), pair[1])
                other_name, other = site_of_pair.setdefault(key, (name, route))
                if other.site != route.site:
                    self.problem(
                        ("apps", name, "route", "server_name"),
                        f"server {pair[0]}:{pair[1]} is also declared by app {other_name!r} "
                        "with different server_name/listen lists",
                        "apps sharing a server must list the same server_name and listen",
                    )
                    break
            self.default_server(name, route, routed)
            mount = (*route.site, route.path)
            other_name = mounts.setdefault(mount, name)
            if other_name != name:
                self.problem(
                    ("apps", name, "route", "path"),
                    f"path {route.path} on this server is already app {other_name!r}'s",
                    "mount the app at another path or server_name",
                )
        # Mount points by server and path without its trailing slash, each app once.
        mounted_at: dict[tuple[tuple[str, ...], tuple[int, ...], str], list[str]] = {}
        for name, route in routed.items():
            mounted_at.setdefault((*route.site, route.path.rstrip("/")), []).append(name)
        static_owner: dict[tuple[tuple[str, ...], tuple[int, ...], str], str] = {}
        for name, route in routed.items():
            for location in route.static:
                owner = static_owner.setdefault((*route.site, location), name)
                if owner != name:
                    self.problem(
                        ("apps", name, "route", "static", location),
                        f"static location {location} on this server is already app {owner!r}'s",
                        "nginx refuses a duplicate location; serve it from one app",
                    )
                for mounted_name in mounted_at.get((*route.site, location.rstrip("/")), ()):
                    self.problem(
                        ("apps", name, "route", "static", location),
                        f"static location {location} is app {mounted_name!r}'s mount point",
                        "serve static files from a sub-path",
                    )
                alias = route.static[location]
                if location.endswith("/") != alias.endswith("/"):
                    self.problem(
                        ("apps", name, "route", "static", location),
                        "location and directory must both end with / or both not",
                        "a mismatch lets requests escape the directory (nginx alias traversal)",
                    )

    def default_server(self, name: str, route: Route, routed: Mapping[str, Route]) -> None:
        """One default server per port, and one answer for a server block shared by apps."""
        if not route.default_server:
            return
        for other_name, other in routed.items():
            if other_name == name or other.default_server == route.default_server:
                continue
            if other.site == route.site:
                self.problem(
                    ("apps", name, "route", "default_server"),
                    f"app {other_name!r} shares this server block without default_server",
                    "apps on one server block must agree; set it on all of them",
                )
                return
        for other_name, other in routed.items():
            if other.default_server and other.site != route.site:
                shared = sorted(set(other.listen) & set(route.listen))
                if shared and other_name < name:
                    self.problem(
                        ("apps", name, "route", "default_server"),
                        f"port {shared[0]} already has a default server: the server block "
                        f"of app {other_name!r}",
                        "nginx allows one default server per port",
                    )
                    return

    def socket_layout(self, apps: Mapping[str, App]) -> None:
        """Sockets nested in other sockets' paths or in another app's runtime directory."""
        socket_of = {
            app.socket_path(worker): app.name
            for app in apps.values()
            for worker in range(1, app.workers + 1)
        }
        runtime_of = {
            "/run/" + app.runtime_directory: app.name
            for app in apps.values()
            if app.runtime_directory
        }
        reported: set[tuple[str, str]] = set()  # one problem per pair of apps
        for path, name in socket_of.items():
            for directory in _parents(path):
                other = socket_of.get(directory)
                if other and (name, other) not in reported:
                    reported.add((name, other))
                    self.problem(
                        ("apps", name, "socket"),
                        f"socket {path} would be inside the socket {directory} of app {other!r}",
                        "a socket cannot also be a directory; use separate directories",
                    )
            for directory in (path, *_parents(path)):
                owner = runtime_of.get(directory)
                if owner and owner != name and (owner, name) not in reported:
                    reported.add((owner, name))
                    self.problem(
                        ("apps", owner, "runtime_directory"),
                        f"{directory} holds the socket {path} of app {name!r}; systemd "
                        f"deletes it whenever the workers of app {owner!r} stop",
                        "give the app a runtime directory of its own",
                    )

    def nginx_names(self, routed: Mapping[str, Route], nginx: Nginx) -> None:
        """Apps whose nginx upstream or server blocks would get the same name or file."""
        from fcgicompose import names  # names imports this module

        upstream_owner: dict[str, str] = {}
        site_file: dict[str, tuple[str, Route]] = {}
        for name, route in routed.items():
            upstream = names.upstream_name(name)
            owner = upstream_owner.setdefault(upstream, name)
            if owner != name:
                self.problem(
                    ("apps", name),
                    f"app {owner!r} has the same nginx upstream name {upstream}",
                    "app names must differ in more than - versus _",
                )
            path = names.site_path(nginx, route)
            other_name, other = site_file.setdefault(path, (name, route))
            if other.site != route.site:
                self.problem(
                    ("apps", name, "route", "server_name"),
                    f"server block would be written to {path}, like app {other_name!r}'s "
                    "different one",
                    "use another first server_name or listen port",
                )

    # -- generic pieces ------------------------------------------------------------------

    def table(self, raw: dict[str, Any], name: str, parent: Key) -> dict[str, Any]:
        value = raw.get(name, {})
        if isinstance(value, dict):
            return value
        self.problem(
            (*parent, name), f"must be a table, not {_toml_type(value)}", f"write [{name}]"
        )
        return {}

    def unknown_keys(
        self, raw: Mapping[str, Any], known: typing.Iterable[str], parent: Key
    ) -> bool:
        known = list(known)
        clean = True
        for key in raw:
            if key in known:
                continue
            clean = False
            if key in _NOT_SETTINGS:
                self.problem((*parent, key), "is not a setting", _NOT_SETTINGS[key])
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
            self.problem((*parent, key), "unknown key", hint)
        return clean

    def model(self, cls: type[Any], raw: Any, key: Key, **given: Any) -> Any:
        """Build an attrs model from a table, or INVALID after reporting why."""
        if not isinstance(raw, dict):
            self.problem(key, f"must be a table, not {_toml_type(raw)}")
            return INVALID
        fields = _settings(cls)
        self.unknown_keys(raw, [f.name for f in fields], key)
        values: dict[str, Any] = dict(given)
        hints = _type_hints(cls)
        ok = True
        for field in fields:
            rule = rule_of(field)
            assert rule is not None
            if field.name not in raw:
                if rule.required:
                    self.problem((*key, field.name), "missing", f"add {field.name} = ...")
                    ok = False
                continue
            value = self.value(hints[field.name], raw[field.name], (*key, field.name), field)
            if value is INVALID:
                ok = False
            else:
                values[field.name] = value
        return cls(**values) if ok else INVALID

    def value(self, tp: Any, raw: Any, key: Key, field: attrs.Attribute[Any]) -> Any:
        rule = rule_of(field)
        assert rule is not None
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):  # X | None: None is "not given"
            (tp,) = [t for t in typing.get_args(tp) if t is not type(None)]
            origin = typing.get_origin(tp)
        if attrs.has(tp):
            return self.model(tp, raw, key)
        if origin is tuple:
            item_type = typing.get_args(tp)[0]
            if not isinstance(raw, list):
                self.problem(key, f"must be a list, not {_toml_type(raw)}", f"write [{raw!r}]")
                return INVALID
            items = [self.scalar(item_type, item, (*key, i), rule) for i, item in enumerate(raw)]
            if INVALID in items:
                return INVALID
            if not items and field.name in ("server_name", "listen"):
                self.problem(key, "must not be empty")
                return INVALID
            if field.name == "listen" and len(set(items)) != len(items):
                self.problem(key, "lists a port twice", "nginx refuses a duplicate listen")
                return INVALID
            if field.name == "server_name" and len({i.lower() for i in items}) != len(items):
                # nginx compares host names without regard to case, and ignores the repeat.
                self.problem(key, "lists a host name twice", "nginx ignores the second one")
                return INVALID
            value = tuple(items)
            return self.checked(value, key, rule, "whole")
        if origin in (Mapping, dict) or tp is Mapping:
            if not isinstance(raw, dict):
                self.problem(
                    key, f"must be a table, not {_toml_type(raw)}", 'write { NAME = "value" }'
                )
                return INVALID
            result: dict[str, str] = {}
            for name, item in sorted(raw.items()):
                item_key = (*key, name)
                if rule.pattern and not matches(rule.pattern, name):
                    self.problem(item_key, f"invalid name {name!r}", rule.pattern_hint)
                    continue
                if not isinstance(item, str):
                    self.problem(item_key, f"must be a string, not {_toml_type(item)}")
                    continue
                if self.checked(item, item_key, rule, "item") is not INVALID:
                    result[name] = item
            return result if len(result) == len(raw) else INVALID
        return self.scalar(tp, raw, key, rule)

    def scalar(self, tp: Any, raw: Any, key: Key, rule: Any) -> Any:
        if isinstance(tp, type) and issubclass(tp, StrEnum):
            choices = [member.value for member in tp]
            if raw in choices:
                return tp(raw)
            self.problem(
                key,
                f"must be one of {', '.join(map(repr, choices))} (got {raw!r})",
                _closest(raw, choices),
            )
            return INVALID
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            self.problem(
                key,
                f"must be true or false, not {_toml_type(raw)}",
                "write true or false, unquoted",
            )
            return INVALID
        if tp is int:
            if not isinstance(raw, int) or isinstance(raw, bool):
                self.problem(key, f"must be an integer, not {_toml_type(raw)}", _integer_hint(raw))
                return INVALID
            if rule.minimum is not None and raw < rule.minimum:
                self.problem(key, f"must be at least {rule.minimum} (got {raw})")
                return INVALID
            if rule.maximum is not None and raw > rule.maximum:
                self.problem(key, f"must be at most {rule.maximum} (got {raw})")
                return INVALID
            return raw
        if tp is str:
            if not isinstance(raw, str):
                hint = f"quote it: {json.dumps(str(raw))}" if isinstance(raw, int | float) else ""
                self.problem(key, f"must be a string, not {_toml_type(raw)}", hint)
                return INVALID
            if _no_control(raw):
                self.problem(key, *_no_control(raw))  # type: ignore[misc]
                return INVALID
            if rule.pattern and not matches(rule.pattern, raw):
                problem = _no_control(raw)
                message = problem[0] if problem else f"invalid value {raw!r}"
                self.problem(key, message, rule.pattern_hint)
                return INVALID
            return self.checked(raw, key, rule, "item")
        raise TypeError(f"no loader for {tp!r}")  # a programming error, not user input

    def checked(self, value: Any, key: Key, rule: Any, scope: str) -> Any:
        """Run a rule's checks: on strings item by item, on tuples as a whole."""
        if scope == "item" and not isinstance(value, str):
            return value
        if isinstance(value, str) and not value and rule.empty_is_unset:
            return value  # e.g. group = "": the user's primary group
        for check in rule.checks:
            is_whole_check = check is _executable
            if is_whole_check != (scope == "whole"):
                continue
            problem = check(value)
            if problem:
                self.problem(key, *problem)
                return INVALID
        if scope == "whole" and isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, str) and _no_control(item):
                    self.problem((*key, i), *_no_control(item))  # type: ignore[misc]
                    return INVALID
        return value


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    # Annotations are strings (from __future__ import annotations): resolving them compiles
    # each one, which done per app was a third of the time to load a large spec.
    hints = _TYPE_HINTS.get(cls)
    if hints is None:
        hints = _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return hints


_TYPE_HINTS: dict[type[Any], dict[str, Any]] = {}


def _settings(cls: type[Any]) -> list[attrs.Attribute[Any]]:
    """The declared settings of a model, in declaration order."""
    return [f for f in attrs.fields(cls) if rule_of(f) is not None]


def settings_of(cls: type[Any]) -> list[attrs.Attribute[Any]]:
    """Public view of a model's settings (schema and docs generation)."""
    return _settings(cls)


def _closest(value: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _integer_hint(raw: Any) -> str:
    """How to write the integer the user probably meant."""
    if isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]+", raw.strip()):
        return f"write {raw.strip()} without quotes"
    if isinstance(raw, float) and raw.is_integer():
        return f"write {int(raw)}, without the decimal point"
    return "write a whole number, e.g. 4"


def _toml_type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
