"""Run the real offline validators on generated files: `systemd-analyze verify` and `nginx -t`.

Both tools are lenient in ways that hide mistakes, so the helpers here decide what counts:

- `systemd-analyze verify` (252) exits 1 on "Unknown key" or "Failed to parse ..., ignoring" but
  0 on other warnings ("Standard output type syslog is obsolete", "Accepting user/group name
  ..."). Any output line naming one of our units or files, or the verify root, is a complaint;
  in the default strict mode every other output line is one too (the root is hermetic).
- `nginx -t -q` prints nothing when the config is clean and exits 0 on `[warn]`: every line it
  prints is a complaint (the skeleton around the generated files is ours, so it must be silent).

Template units are verified as instances (`fcgi-rt@1.service`): `systemd-analyze verify` handed
the template file itself invents an instance name, and a bare instance name is only found through
the unit search path. On systemd 252 `--root=DIR` with the units under DIR/etc/systemd/system
works, and keeps the host's own units out of the check. With `--root` the `ExecStart=` program is
also looked up inside DIR, so `build_verify_root` puts an executable stub there for every program
the spec names: whether a program is installed on this host is environment, not what we check.

Nothing here imports fcgicompose: artifacts are anything with `.kind`, `.path`, `.content`,
`.link_target`, `.apps` and `.worker` (duck-typed), so the helpers also work on hand-made input.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SYSTEMD_DIR = "/etc/systemd/system"

# Targets every socket/service instance depends on through systemd's default dependencies
# (Requires=sysinit.target, Before=sockets.target, After=basic.target, Conflicts=shutdown.target).
# Empty stubs in the verify root let `--recursive-errors=yes` follow dependencies without
# complaining about the host's boot transaction, so it can catch a dangling Requires=/After=.
CORE_TARGETS = ("sysinit.target", "sockets.target", "basic.target", "shutdown.target")

STUB_PROGRAM = (
    "#!/bin/sh\n# Stub created by tests/validators.py: verify only checks it exists.\nexit 0\n"
)


# ----------------------------------------------------------------------------- environment


def in_ci() -> bool:
    """Whether we run in CI, where a validator that cannot run is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_tools(*tools: str) -> list[str]:
    """The tools among `tools` not found on PATH (sbin included: nginx lives there)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [tool for tool in tools if shutil.which(tool, path=path) is None]


# Debian package that provides each tool, for the skip message.
PACKAGES = {
    "systemd-analyze": "systemd",
    "systemctl": "systemd",
    "nginx": "nginx",
    "unshare": "util-linux",
}


def cannot_run(reason: str) -> None:
    """Skip the calling test, or fail it under CI=true, where the validators must run."""
    if in_ci():
        pytest.fail(f"CI=true and the validators must run, but: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    """Skip the calling test when a validator is not installed; fail instead under CI=true."""
    missing = missing_tools(*tools)
    if missing:
        packages = " ".join(sorted({PACKAGES.get(name, name) for name in missing}))
        cannot_run(f"not installed: {', '.join(missing)} (apt-get install {packages})")


@functools.cache
def netns_problem() -> str | None:
    """Why `unshare` cannot give us a fresh network namespace here, or None."""
    if missing_tools("unshare"):
        return "unshare is not installed (apt-get install util-linux)"
    returncode, output = _run([*netns_prefix(), "true"])
    if returncode != 0:
        return f"cannot create a network namespace for nginx -t: {output.strip()}"
    return None


def require_netns() -> None:
    """nginx -t binds its listen ports: it needs a network namespace of its own."""
    problem = netns_problem()
    if problem:
        cannot_run(problem)


def tool(name: str) -> str:
    """Absolute path of an installed tool."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(name)
    return found


# ----------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """What one validator run said, and whether that counts as a pass."""

    command: tuple[str, ...]
    returncode: int
    output: str  # stdout and stderr, in that order
    complaints: tuple[str, ...]  # the output lines that count as failures
    context: str = ""  # extra text for the failure message (files checked, root)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.complaints

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"validator {verdict}: {shlex.join(self.command)}",
            f"exit status: {self.returncode}",
            "complaints:" if self.complaints else "complaints: none",
            *(f"  {line}" for line in self.complaints),
            "full output:" if self.output.strip() else "full output: (none)",
            *(f"  | {line}" for line in self.output.splitlines()),
        ]
        if self.context:
            lines += ["", self.context]
        return "\n".join(lines)


def _run(command: list[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    completed = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=dict(env) if env is not None else None,
        timeout=120,
        check=False,
    )
    return completed.returncode, completed.stdout + completed.stderr


# ----------------------------------------------------------------------------- systemd


def _under(root: Path, path: str) -> Path:
    if not path.startswith("/"):
        raise ValueError(f"not an absolute target path: {path!r}")
    return root / path.lstrip("/")


def build_verify_root(
    root: Path,
    files: Mapping[str, str],
    links: Mapping[str, str] | None = None,
    programs: Iterable[str] = (),
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
) -> Path:
    """Lay out a root for `systemd-analyze verify --root=ROOT`.

    `files` and `links` map absolute target paths (as on the host) to content and symlink
    target; they are placed under `root` unchanged. `programs` are the programs the spec asks
    to run, taken from the spec and not from the rendered units (so a mis-escaped ExecStart= is
    caught): each gets an executable stub unless the root already has it. `users`/`groups` go
    into the root's passwd/group so that a systemd that checks accounts finds them (252 does
    not); like the stubs, that is environment, not what is checked.
    """
    for path, content in files.items():
        target = _under(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    for path, link_target in (links or {}).items():
        target = _under(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(link_target)
    for target_name in CORE_TARGETS:
        target = _under(root, f"{SYSTEMD_DIR}/{target_name}")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("[Unit]\nDescription=stub for offline verify\n", encoding="utf-8")
    for program in programs:
        stub = _under(root, program)
        if not stub.exists():
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text(STUB_PROGRAM, encoding="utf-8")
            stub.chmod(0o755)
    accounts = sorted({"root", "nobody", *users})
    group_names = sorted({"root", "nogroup", *groups, *users})
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(
        "".join(
            f"{name}:x:{0 if name == 'root' else 1000 + i}:{0 if name == 'root' else 1000 + i}"
            f"::/nonexistent:/usr/sbin/nologin\n"
            for i, name in enumerate(accounts)
        ),
        encoding="utf-8",
    )
    (etc / "group").write_text(
        "".join(
            f"{name}:x:{0 if name == 'root' else 2000 + i}:\n" for i, name in enumerate(group_names)
        ),
        encoding="utf-8",
    )
    return root


def unit_markers(units: Iterable[str]) -> set[str]:
    """Strings that identify our units in verify output: each name and its template stem."""
    markers: set[str] = set()
    for unit in units:
        markers.add(unit)
        if "@" in unit:
            markers.add(unit.split("@", 1)[0] + "@")  # fcgi-rt@ matches fcgi-rt@.service, @1...
    return markers


def systemd_verify(
    root: Path,
    units: Iterable[str],
    *,
    recursive_errors: str = "no",
    markers: Iterable[str] = (),
    strict: bool = True,
) -> Outcome:
    """`systemd-analyze verify` the unit instances `units` found under `root`.

    Complaints are the output lines naming one of the units (or their template), any extra
    `markers`, or the root directory itself (file:line messages use the full path). With
    `strict` (the default) every other output line is a complaint too: the root holds nothing
    but our units and stubs, and some warnings name no unit at all, e.g. systemd 252's
    "Accepting user/group name '0rt!', which does not match strict user/group name rules."
    (exit status 0) for `User=0rt!`.
    """
    units = list(units)
    command = [
        tool("systemd-analyze"),
        "verify",
        "--man=no",
        f"--recursive-errors={recursive_errors}",
        f"--root={root}",
        *units,
    ]
    # No pager, no colour, no unit path from the caller's environment leaking into the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env.update(SYSTEMD_PAGER="cat", SYSTEMD_COLORS="0", SYSTEMD_LOG_COLOR="0", LC_ALL="C.UTF-8")
    returncode, output = _run(command, env)
    wanted = unit_markers(units) | set(markers) | {str(root)}
    complaints = tuple(
        line
        for line in output.splitlines()
        if line.strip() and (strict or any(marker in line for marker in wanted))
    )
    return Outcome(tuple(command), returncode, output, complaints, _listing(root, SYSTEMD_DIR))


def systemctl_enable_links(root: Path, units: Iterable[str]) -> tuple[Outcome, dict[str, str]]:
    """Run `systemctl --root=ROOT enable UNITS` and return the symlinks it created.

    Links are returned as {absolute target path: link target}, comparable with what
    fcgicompose writes. `root` must hold only the unit files, no links yet.
    """
    units = list(units)
    before = set(_links_under(root))
    command = [tool("systemctl"), f"--root={root}", "--no-reload", "enable", *units]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env.update(SYSTEMD_PAGER="cat", SYSTEMD_COLORS="0", LC_ALL="C.UTF-8")
    returncode, output = _run(command, env)
    created = {path: target for path, target in _links_under(root).items() if path not in before}
    # "Created symlink" lines are the normal report; anything else is a complaint.
    complaints = tuple(
        line
        for line in output.splitlines()
        if line.strip()
        and not line.startswith("Created symlink")
        and "is added as a dependency to a non-existent unit sockets.target" not in line
    )
    return Outcome(tuple(command), returncode, output, complaints), created


def _links_under(root: Path) -> dict[str, str]:
    return {
        "/" + str(path.relative_to(root)): os.readlink(path)
        for path in sorted(root.rglob("*"))
        if path.is_symlink()
    }


def _listing(root: Path, under: str) -> str:
    base = _under(root, under)
    if not base.is_dir():
        return ""
    lines = [f"files under {base}:"]
    for path in sorted(base.rglob("*")):
        if path.is_symlink():
            lines.append(f"  {path.relative_to(base)} -> {os.readlink(path)}")
        elif path.is_file():
            lines.append(f"  {path.relative_to(base)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- nginx


def nginx_skeleton(prefix: Path) -> str:
    """A main nginx.conf like Debian's, with every writable path inside `prefix`.

    The generated files are meant for an `include .../conf.d/*.conf;` inside `http {}`, so
    that is where they go. mime.types is included when the host has it, as Debian's does.
    """
    mime = "    include /etc/nginx/mime.types;\n" if Path("/etc/nginx/mime.types").is_file() else ""
    return (
        "# Skeleton written by tests/validators.py around the generated files.\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"{mime}"
        "    default_type application/octet-stream;\n"
        f"    access_log {prefix}/access.log;\n"
        f"    client_body_temp_path {prefix}/client_body_temp;\n"
        f"    proxy_temp_path {prefix}/proxy_temp;\n"
        f"    fastcgi_temp_path {prefix}/fastcgi_temp;\n"
        f"    uwsgi_temp_path {prefix}/uwsgi_temp;\n"
        f"    scgi_temp_path {prefix}/scgi_temp;\n"
        f"    include {prefix}/conf.d/*.conf;\n"
        "}\n"
    )


def netns_prefix() -> list[str]:
    """Run in a fresh network namespace, so `listen 80` binds whatever the host runs."""
    # As root a plain new netns works; otherwise a user namespace maps us to root in it.
    return [tool("unshare"), "-n"] if os.geteuid() == 0 else [tool("unshare"), "-r", "-n"]


def nginx_test(prefix: Path, conf_files: Mapping[str, str]) -> Outcome:
    """`nginx -t` a skeleton config including `conf_files` ({file name: content}).

    The files are placed in PREFIX/conf.d/ under their own base names: the one documented
    deviation from the target host, where they sit in the spec's nginx.conf_dir.
    """
    conf_d = prefix / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    for name, content in conf_files.items():
        if "/" in name or not name.endswith(".conf"):
            raise ValueError(f"not a conf.d file name: {name!r}")
        (conf_d / name).write_text(content, encoding="utf-8")
    (prefix / "nginx.conf").write_text(nginx_skeleton(prefix), encoding="utf-8")
    command = [
        *netns_prefix(),
        tool("nginx"),
        "-t",
        "-q",
        "-e",
        "stderr",
        "-p",
        f"{prefix}/",
        "-c",
        f"{prefix}/nginx.conf",
    ]
    returncode, output = _run(command)
    complaints = tuple(line for line in output.splitlines() if line.strip())
    context = "\n".join(
        [f"files in {conf_d}:", *(f"  {path.name}" for path in sorted(conf_d.glob("*.conf")))]
    )
    return Outcome(tuple(command), returncode, output, complaints, context)


# ----------------------------------------------------------------------------- item 10


def expand_instance(value: str, instance: str) -> str:
    """A unit-file value with systemd's %i and %% expanded; any other specifier is an error.

    Only these two may appear in a socket path fcgicompose writes: anything else would make
    systemd listen somewhere nginx is not pointed at.
    """

    def one(match: re.Match[str]) -> str:
        spec = match.group(1)
        if spec == "%":
            return "%"
        if spec == "i":
            return instance
        raise ValueError(
            f"unexpected specifier %{spec} in {value!r}" if spec else f"dangling % in {value!r}"
        )

    return re.sub(r"%(.?)", one, value, flags=re.DOTALL)


def unit_values(text: str, section: str, key: str) -> list[str]:
    """Values of `key=` in `[section]` of a unit file (no line continuations in our output)."""
    values: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        name, sep, value = line.partition("=")
        if sep and current == section and name.strip() == key:
            values.append(value.strip())
    return values


@dataclass
class SocketSets:
    """Socket paths per app, as systemd will listen on them and as nginx points at them."""

    systemd: dict[str, set[str]] = field(default_factory=dict)
    nginx: dict[str, set[str]] = field(default_factory=dict)

    @property
    def routed(self) -> set[str]:
        """Apps nginx has an upstream for."""
        return set(self.nginx)

    @property
    def unrouted(self) -> set[str]:
        """Apps with sockets but no upstream."""
        return set(self.systemd) - set(self.nginx)

    def mismatches(self) -> list[str]:
        """Every difference between what nginx points at and what systemd listens on."""
        problems = []
        all_nginx = set().union(*self.nginx.values())
        routed_listened = set().union(*(self.systemd.get(app, set()) for app in self.nginx))
        if all_nginx != routed_listened:
            problems.append(
                f"nginx points at {sorted(all_nginx)} but the routed apps' socket units "
                f"listen on {sorted(routed_listened)}"
            )
        for app in sorted(self.nginx):
            if "" in self.nginx[app]:
                problems.append(f"app {app}: empty unix: path in its upstream")
            listened = self.systemd.get(app)
            if listened is None:
                problems.append(f"app {app}: nginx upstream but no socket unit")
                continue
            if only := sorted(self.nginx[app] - listened):
                problems.append(f"app {app}: nginx points at sockets nobody listens on: {only}")
            if only := sorted(listened - self.nginx[app]):
                problems.append(f"app {app}: systemd listens on sockets nginx ignores: {only}")
            if not listened:
                problems.append(f"app {app}: no socket at all")
        return problems


_UPSTREAM_SERVER = re.compile(r'^\s*server\s+("(?:[^"\\]|\\.)*"|\S+?)(?=[\s;])', re.MULTILINE)


def nginx_unquote(token: str) -> str:
    """An nginx token as nginx reads it: quotes removed, backslash escapes resolved."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        body = token[1:-1]
        return re.sub(r"\\(.)", lambda m: {"t": "\t", "r": "\r", "n": "\n"}.get(m[1], m[1]), body)
    return token


def socket_sets(artifacts: Iterable[Any]) -> SocketSets:
    """Socket paths derived from the artifacts only.

    systemd side: each socket template's ListenStream= with %i expanded for every worker that
    has an enablement link. nginx side: every `server unix:...` line of each upstream file.
    """
    artifacts = list(artifacts)
    workers: dict[str, set[int]] = {}
    for artifact in artifacts:
        if str(artifact.kind) == "enable-link":
            (app,) = artifact.apps
            workers.setdefault(app, set()).add(int(artifact.worker))
    sets = SocketSets()
    for artifact in artifacts:
        kind = str(artifact.kind)
        if kind == "socket-unit":
            (app,) = artifact.apps
            listens = unit_values(artifact.content, "Socket", "ListenStream")
            sets.systemd[app] = {
                expand_instance(value, str(worker))
                for value in listens
                for worker in sorted(workers.get(app, ()))
            }
        elif kind == "nginx-upstream":
            (app,) = artifact.apps
            paths = set()
            for token in _UPSTREAM_SERVER.findall(artifact.content):
                address = nginx_unquote(token)
                if address.startswith("unix:"):
                    paths.add(address.removeprefix("unix:"))
            sets.nginx[app] = paths
    return sets
