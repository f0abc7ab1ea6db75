"""Does what fcgicompose wrote mean what the spec says? Read it back like systemd and nginx.

`check(spec, artifacts)` reads every generated unit and nginx file with the reference readers
(fuzz/reference.py) and compares each user value with the spec model: argv, environment,
description, working directory, runtime directory, accounts, socket paths, upstream servers,
server names, ports, locations, aliases and FastCGI params. It also checks that no value could
add a line or a directive: every unit key and nginx directive must be one the renderer writes,
each as often as it writes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from fuzz import reference as ref

# Every (section, key) a generated service or socket template may contain.
SERVICE_KEYS = {
    ("Unit", key)
    for key in ("Description", "Requires", "After", "StartLimitIntervalSec", "StartLimitBurst")
} | {("Install", "Also")}
SERVICE_KEYS |= {
    ("Service", key)
    for key in [
        "Type",
        "ExecStart",
        "StandardInput",
        "StandardOutput",
        "StandardError",
        "User",
        "Group",
        "WorkingDirectory",
        "RuntimeDirectory",
        "Environment",
        "Restart",
        "RestartSec",
        "MemoryMax",
        "TasksMax",
        "LimitNOFILE",
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "LockPersonality",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "MemoryDenyWriteExecute",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "UMask",
        "ProtectProc",
        "ProcSubset",
        "RemoveIPC",
        "PrivateIPC",
        "KeyringMode",
    ]
}
SOCKET_KEYS = {("Unit", "Description"), ("Install", "WantedBy")} | {
    ("Socket", key)
    for key in (
        "ListenStream",
        "Accept",
        "SocketUser",
        "SocketGroup",
        "SocketMode",
        "DirectoryMode",
        "RemoveOnStop",
    )
}
# Keys whose lines add up instead of replacing each other (an allow list, then a deny list).
REPEATABLE = {("Service", "Environment"), ("Service", "SystemCallFilter")}

UPSTREAM_DIRECTIVES = {"server", "least_conn", "ip_hash", "keepalive"}
LOCATION_DIRECTIVES = {
    "fastcgi_pass",
    "fastcgi_keep_conn",
    "fastcgi_next_upstream",
    "fastcgi_read_timeout",
    "fastcgi_split_path_info",
    "fastcgi_param",
    "alias",
    "return",
}


def check(spec: Any, artifacts: Iterable[Any]) -> list[str]:
    """Every way the artifacts' meaning differs from the spec (empty: they mean the same)."""
    problems: list[str] = []
    by_path = {artifact.path: artifact for artifact in artifacts}
    for app in spec.apps.values():
        service = by_path.get(f"/etc/systemd/system/fcgi-{app.name}@.service")
        socket = by_path.get(f"/etc/systemd/system/fcgi-{app.name}@.socket")
        if service is None or socket is None:
            problems.append(f"{app.name}: no service or socket template")
            continue
        for worker in sorted({1, app.workers}):
            problems += _problems(f"{app.name}@{worker}.service", _service, app, service, worker)
            problems += _problems(f"{app.name}@{worker}.socket", _socket, app, socket, worker)
    upstreams = [a for a in by_path.values() if str(a.kind) == "nginx-upstream"]
    sites = [a for a in by_path.values() if str(a.kind) == "nginx-site"]
    routed = {name: app for name, app in spec.apps.items() if app.route is not None}
    for upstream in upstreams:
        (name,) = upstream.apps
        problems += _problems(upstream.path, _upstream, routed[name], upstream)
    if sorted(a.apps[0] for a in upstreams) != sorted(routed):
        problems.append(f"upstream files for {sorted(a.apps for a in upstreams)}, routed {routed}")
    seen: list[str] = []
    for site in sites:
        apps = [routed[name] for name in site.apps]
        seen += site.apps
        problems += _problems(site.path, _site, apps, site)
    if sorted(seen) != sorted(routed):
        problems.append(
            f"site files mount {sorted(seen)}, but the routed apps are {sorted(routed)}"
        )
    return problems + _nginx_conflicts(upstreams, sites)


def _nginx_conflicts(upstreams: Sequence[Any], sites: Sequence[Any]) -> list[str]:
    """What nginx refuses or ignores across files: a name, location or listen given twice."""
    problems: list[str] = []
    try:
        upstream_names = Counter(
            directive.args[0].text
            for artifact in upstreams
            for directive in ref.nginx_parse(artifact.content)
        )
        server_names: Counter[tuple[str, str]] = Counter()
        for artifact in sites:
            for server in ref.nginx_parse(artifact.content):
                block = server.block or []
                ports = [d.args[0].text for d in block if d.name.text == "listen"]
                names = [
                    a.text.lower() for d in block if d.name.text == "server_name" for a in d.args
                ]
                server_names.update((name, port) for name in names for port in set(ports))
                for what, count in Counter(ports).items():
                    if count > 1:
                        problems.append(f"{artifact.path}: duplicate listen {what}")
                locations = Counter(
                    tuple(a.text for a in d.args) for d in block if d.name.text == "location"
                )
                for where, count in locations.items():
                    if count > 1:
                        problems.append(f"{artifact.path}: duplicate location {where}")
    except ref.Unliteral as error:
        return [f"nginx files not read literally: {error}"]
    problems += [f"duplicate upstream {name}" for name, n in upstream_names.items() if n > 1]
    problems += [
        f"server name {name} on port {port} given {n} times (nginx ignores all but one)"
        for (name, port), n in server_names.items()
        if n > 1
    ]
    return problems


def _problems(where: str, checker: Any, *args: Any) -> list[str]:
    try:
        return [f"{where}: {problem}" for problem in checker(*args)]
    except ref.Unliteral as error:
        return [f"{where}: not read literally: {error}"]


def _differs(what: str, got: Any, want: Any) -> list[str]:
    return [] if got == want else [f"{what}: systemd/nginx read {got!r}, the spec says {want!r}"]


# ----------------------------------------------------------------------------- systemd


def _service(app: Any, artifact: Any, worker: int) -> list[str]:
    read = ref.read_service(artifact.content, str(worker))
    problems = _unit_structure(read.keys, SERVICE_KEYS)
    environment = {"FCGICOMPOSE_WORKER": str(worker), **dict(app.environment)}
    base = app.description or f"{app.name} FastCGI app"
    problems += _differs("Description", read.description, f"{base} (worker {worker})")
    problems += _differs("program", read.exec_start.path, app.command[0])
    problems += _differs("argv", list(read.exec_start.argv), list(app.command))
    problems += _differs("environment", read.environment, environment)
    problems += _differs("WorkingDirectory", read.working_directory, app.working_directory)
    runtime = (app.runtime_directory,) if app.runtime_directory else ()
    problems += _differs("RuntimeDirectory", read.runtime_directory, runtime)
    problems += _differs("User", read.user, app.user)
    problems += _differs("Group", read.group, app.group)
    if app.memory_max:
        problems += _differs("MemoryMax", read.memory_max, ref.memory_limit(app.memory_max))
    expected_environment_lines = 1 + len(app.environment)
    lines = read.keys.count(("Service", "Environment"))
    if lines != expected_environment_lines:
        problems.append(f"{lines} Environment= lines, expected {expected_environment_lines}")
    return problems


def _socket(app: Any, artifact: Any, worker: int) -> list[str]:
    assignments = ref.unit_assignments(artifact.content)
    problems = _unit_structure(tuple((a.section, a.key) for a in assignments), SOCKET_KEYS)
    paths = ref.read_socket_paths(artifact.content, str(worker))
    return problems + _differs("ListenStream", paths, [app.socket_path(worker)])


def _unit_structure(keys: Sequence[tuple[str, str]], allowed: set[tuple[str, str]]) -> list[str]:
    problems = [
        f"unexpected key {section}/{key}" for section, key in keys if (section, key) not in allowed
    ]
    for key, count in Counter(keys).items():
        if count > 1 and key not in REPEATABLE:
            problems.append(f"{key[0]}/{key[1]} set {count} times")
    return problems


# ----------------------------------------------------------------------------- nginx


def _upstream(app: Any, artifact: Any) -> list[str]:
    directives = ref.nginx_parse(artifact.content)
    if len(directives) != 1 or directives[0].name.text != "upstream":
        return [f"expected one upstream block, got {[d.words for d in directives]}"]
    (upstream,) = directives
    problems = _differs("upstream name", [a.text for a in upstream.args], [_upstream_name(app)])
    assert upstream.block is not None
    servers = []
    for directive in upstream.block:
        if directive.block is not None or directive.name.text not in UPSTREAM_DIRECTIVES:
            problems.append(f"unexpected directive {directive.words}")
        if directive.name.text == "server":
            servers.append(ref.literal(directive.args[0]))
    want = [f"unix:{app.socket_path(worker)}" for worker in range(1, app.workers + 1)]
    return problems + _differs("upstream servers", servers, want)


def _upstream_name(app: Any) -> str:
    return f"fcgicompose_{app.name}".replace("-", "_")


def _site(apps: Sequence[Any], artifact: Any) -> list[str]:
    directives = ref.nginx_parse(artifact.content)
    if len(directives) != 1 or directives[0].name.text != "server" or directives[0].args:
        return [f"expected one server block, got {[d.words for d in directives]}"]
    server = directives[0].block
    assert server is not None
    route = apps[0].route
    problems: list[str] = []
    listen = [d for d in server if d.name.text == "listen"]
    names = [d for d in server if d.name.text == "server_name"]
    locations = [d for d in server if d.name.text == "location"]
    others = [d.words for d in server if d.name.text not in ("listen", "server_name", "location")]
    if others:
        problems.append(f"unexpected directives in server: {others}")
    problems += _differs(
        "listen",
        [[a.text for a in d.args] for d in listen],
        [[str(p), *(["default_server"] if route.default_server else [])] for p in route.listen],
    )
    if len(names) != 1:
        return [*problems, f"{len(names)} server_name directives"]
    problems += _differs(
        "server_name", [ref.literal(a) for a in names[0].args], list(route.server_name)
    )
    expected_locations = 0
    for app in apps:
        expected_locations += len(app.route.static) + (1 if app.route.path == "/" else 2)
        problems += [f"{app.name}: {p}" for p in _app_locations(app, locations)]
    if len(locations) != expected_locations:
        problems.append(f"{len(locations)} locations, expected {expected_locations}")
    return problems


def _location_args(directive: ref.Directive) -> list[str]:
    return [ref.literal(arg) for arg in directive.args]


def _app_locations(app: Any, locations: Sequence[ref.Directive]) -> list[str]:
    route = app.route
    problems: list[str] = []
    by_args: dict[tuple[str, ...], list[ref.Directive]] = {}
    for prefix in (route.path, *route.static):
        if {".", ".."} & set(prefix.split("/")):
            problems.append(f"location {prefix!r}: nginx normalizes URIs, it never matches")
    for location in locations:
        by_args.setdefault(tuple(_location_args(location)), []).append(location)
    for prefix, directory in route.static.items():
        found = by_args.get(("^~", prefix), [])
        if len(found) != 1:
            problems.append(f"static location {prefix!r} written {len(found)} times")
            continue
        block = found[0].block or []
        got = [[d.name.text, *map(ref.literal, d.args)] for d in block]
        problems += _differs(f"static {prefix!r}", got, [["alias", directory]])
    prefix = "/" if route.path == "/" else route.path + "/"
    if route.path != "/":
        found = by_args.get(("=", route.path), [])
        if len(found) != 1:
            problems.append(f"redirect location {route.path!r} written {len(found)} times")
        else:
            # The only variables in a generated file: the query string, carried along.
            got = [[d.name.text, *(a.text for a in d.args)] for d in found[0].block or []]
            problems += _differs("redirect", got, [["return", "301", prefix + "$is_args$args"]])
    found = by_args.get((prefix,), [])
    if len(found) != 1:
        return [*problems, f"app location {prefix!r} written {len(found)} times"]
    block = found[0].block or []
    params: dict[str, list[ref.Directive]] = {}
    for directive in block:
        if directive.block is not None or directive.name.text not in LOCATION_DIRECTIVES:
            problems.append(f"unexpected directive {directive.words}")
        if directive.name.text == "fastcgi_param":
            params.setdefault(directive.args[0].text, []).append(directive)
        if directive.name.text == "fastcgi_pass":
            problems += _differs(
                "fastcgi_pass", [a.text for a in directive.args], [_upstream_name(app)]
            )
    for name, directives in params.items():
        if len(directives) != 1:
            problems.append(f"fastcgi_param {name} sent {len(directives)} times")
    for name, value in route.params.items():
        found_params = params.get(name, [])
        if len(found_params) != 1:
            continue
        args = found_params[0].args
        if len(args) != 2:
            problems.append(f"fastcgi_param {name}: {len(args)} arguments")
            continue
        problems += _differs(f"param {name}", ref.literal(args[1]), value)
    return problems
