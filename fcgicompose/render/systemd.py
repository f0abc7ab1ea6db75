"""systemd socket and service templates for one app (domain items 1-13)."""

from __future__ import annotations

from fcgicompose import names
from fcgicompose.render import header
from fcgicompose.spec import WORKER_PLACEHOLDER, Activation, App, Nginx


def escape_specifiers(text: str) -> str:
    """A user's literal % must not be read as a systemd specifier."""
    return text.replace("%", "%%")


def _c_quote(text: str) -> str:
    """Double-quote a word; systemd un-escapes C escapes inside quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_word(word: str) -> str:
    """One argv word for ExecStart=: quoted, % and $ made literal."""
    _reject_line_breaks(word)
    return _c_quote(escape_specifiers(word).replace("$", "$$"))


def program_word(path: str) -> str:
    """The program path of ExecStart=: quoted, % made literal; systemd never expands $ in it."""
    _reject_line_breaks(path)
    return _c_quote(escape_specifiers(path))


def exec_start(argv: tuple[str, ...]) -> str:
    """The ExecStart= value running argv exactly.

    systemd expands $ in argv[0] but not in the program path, so one word cannot say both
    when the path has a $: then the path is given with the @ prefix and argv[0] after it.
    """
    words = [exec_word(word) for word in argv[1:]]
    if "$" in argv[0]:
        return " ".join(["@" + program_word(argv[0]), exec_word(argv[0]), *words])
    return " ".join([program_word(argv[0]), *words])


def environment_assignment(name: str, value: str) -> str:
    """One Environment= assignment, quoted as a whole ($ is not expanded there)."""
    _reject_line_breaks(value)
    return _c_quote(escape_specifiers(f"{name}={value}"))


def _reject_line_breaks(text: str) -> None:
    # The spec loader rejects these already; a renderer must never emit them regardless.
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"line break or NUL in unit value {text!r}")


def _description(app: App, what: str) -> str:
    base = escape_specifiers(app.description or f"{app.name} FastCGI app")
    return f"{base} ({what} %i)"


def render_socket(app: App, nginx: Nginx, source: str) -> str:
    """The socket template: systemd creates, owns and removes the socket (items 7, 8, 11)."""
    listen = escape_specifiers(app.socket).replace(escape_specifiers(WORKER_PLACEHOLDER), "%i")
    lines = [
        header("#", source, f"app {app.name}"),
        "[Unit]",
        f"Description={_description(app, 'socket')}",
        "",
        "[Socket]",
        f"ListenStream={listen}",
        "Accept=no",
        f"SocketUser={app.user}",
        f"SocketGroup={nginx.socket_group}",
        f"SocketMode={app.socket_mode.zfill(4)}",
        "DirectoryMode=0755",
        "RemoveOnStop=yes",
        "",
        "[Install]",
        "WantedBy=sockets.target",
    ]
    return "\n".join(lines) + "\n"


def render_service(app: App, source: str) -> str:
    """The service template: one supervised foreground worker per socket (items 1-6)."""
    socket = f"{names.unit_prefix(app)}@%i.socket"
    service: list[str] = [
        "Type=simple",
        "ExecStart=" + exec_start(app.command),
    ]
    if app.activation is Activation.FD0:
        service.append("StandardInput=socket")
    # Without these, StandardInput=socket would send stdout/stderr into the FastCGI socket.
    service += ["StandardOutput=journal", "StandardError=journal"]
    service.append(f"User={app.user}")
    if app.group:
        service.append(f"Group={app.group}")
    service.append(f"WorkingDirectory={escape_specifiers(app.working_directory)}")
    if app.runtime_directory:
        service.append(f"RuntimeDirectory={escape_specifiers(app.runtime_directory)}")
    service.append('Environment="FCGICOMPOSE_WORKER=%i"')  # the worker number, for logs
    service += [
        f"Environment={environment_assignment(name, value)}"
        for name, value in sorted(app.environment.items())
    ]
    service += ["Restart=on-failure", f"RestartSec={app.restart_sec}s"]
    if app.memory_max:
        service.append(f"MemoryMax={app.memory_max}")
    if app.tasks_max:
        service.append(f"TasksMax={app.tasks_max}")
    if app.limit_nofile:
        service.append(f"LimitNOFILE={app.limit_nofile}")
    service += sandboxing(app)
    lines = [
        header("#", source, f"app {app.name}"),
        "[Unit]",
        f"Description={_description(app, 'worker')}",
        f"Requires={socket}",
        f"After={socket}",
        # Deliberate limits: a crash loop stops after this many starts instead of spinning;
        # apply resets failed units, so a fixed app recovers without manual reset-failed.
        f"StartLimitIntervalSec={app.start_limit_interval_sec}s",
        f"StartLimitBurst={app.start_limit_burst}",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        # Not WantedBy=: the socket starts the service (item 6).
        f"Also={socket}",
    ]
    return "\n".join(lines) + "\n"


def sandboxing(app: App) -> list[str]:
    """The service's sandbox lines, each group switched by one app setting (docs/spec.md)."""
    lines = [
        f"NoNewPrivileges={_yes_no(app.no_new_privileges)}",
        f"PrivateTmp={_yes_no(app.private_tmp)}",
        f"ProtectSystem={app.protect_system}",
        f"ProtectHome={app.protect_home}",
    ]
    # A switched-off group writes nothing: systemd's default is the unsandboxed behaviour.
    if app.private_devices:
        lines.append("PrivateDevices=yes")
    if app.protect_kernel:
        lines += [
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
        ]
    if app.protect_proc:
        lines.append("ProtectProc=invisible")
    if app.restrict_namespaces:
        lines.append("RestrictNamespaces=yes")
    if app.system_call_filter:
        lines += [
            "SystemCallFilter=@system-service",
            "SystemCallFilter=~@privileged @resources",
            "SystemCallErrorNumber=EPERM",
            "SystemCallArchitectures=native",
            "LockPersonality=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
        ]
    if app.drop_capabilities:
        lines += ["CapabilityBoundingSet=", "AmbientCapabilities="]
    if app.restrict_address_families:
        lines.append("RestrictAddressFamilies=" + " ".join(app.restrict_address_families))
    if app.memory_deny_write_execute:
        lines.append("MemoryDenyWriteExecute=yes")
    return lines


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# Keys whose change needs no restart of a running unit.
COSMETIC_KEYS = ("Description=", "Documentation=")


def runtime_relevant(unit_text: str) -> str:
    """The part of a unit that matters to running processes: no comments, no [Install],
    no Description=. Two units with the same result need no restart between them."""
    kept: list[str] = []
    section = ""
    for raw_line in unit_text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        if section == "[Install]" or line.startswith(COSMETIC_KEYS):
            continue
        kept.append(line)
    return "\n".join(kept)


def listen_path(socket_unit_text: str, worker: int) -> str:
    """The socket path one worker of a socket template this module wrote listens on.

    The inverse of render_socket's ListenStream=: only %i and %% can appear in it.
    """
    for line in socket_unit_text.splitlines():
        if line.startswith("ListenStream="):
            value = line.removeprefix("ListenStream=")
            return "%".join(part.replace("%i", str(worker)) for part in value.split("%%"))
    return ""
