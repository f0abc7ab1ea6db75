"""Every generated file passes the real validators: `systemd-analyze verify` and `nginx -t`.

For every sample spec, every golden spec and the edge specs below, the generated socket and
service templates are verified as instances (fcgi-APP@1..N) under a scratch `--root`, the
enablement links are compared with what `systemctl --root enable` itself creates, the nginx
files are tested inside a skeleton nginx.conf in a fresh network namespace, and the sockets nginx
points at are compared with the sockets systemd listens on (domain item 10). The negative tests
at the end prove each check can fail.

Known renderer/spec bugs are listed in KNOWN_BUGS and run as strict xfails: when the bug is
fixed the case XPASSes, fails, and the entry must be removed.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fcgicompose import names
from fcgicompose.graph import Artifact, Kind, build_graph, ordered
from fcgicompose.spec import ADDRESS_FAMILIES, Spec, parse_spec

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # works whatever pytest import mode the project picks
    sys.path.insert(0, str(TESTS_DIR))

import validators as v  # noqa: E402  (tests/validators.py)

pytestmark = pytest.mark.validators

PROJECT = TESTS_DIR.parent
SPEC_FILES = {
    str(path.relative_to(PROJECT)): path
    for path in [
        *sorted((PROJECT / "samples").glob("*.toml")),
        *sorted((TESTS_DIR / "golden_specs").glob("*.toml")),
    ]
}

# Specs written for this test: the corners the samples do not reach.
EDGE_SPECS = {
    # % and $ and quotes and spaces and backslashes in argv, Environment= and Description=;
    # a % in the socket path; nginx param values with ; { } and quotes.
    "edge-escaping": r"""
version = 1

[nginx]
user = "www-data"

[apps.esc]
description = "50% \"quoted\" $NAME's app"
command = ["/opt/esc app/bin/serve", "--title", "100% sure", "$HOME", "${HOME}", "$$",
           "it's \"q\"", "back\\slash", "trail\\", "%i %n %%", "", " lead and trail ",
           "semi;colon", "tab\there"]
workers = 2
socket = "/run/esc%dir/s{worker}.sock"
user = "www-data"
working_directory = "/srv/esc%dir"

[apps.esc.environment]
A = "100% literal"
B = "$HOME ${PATH} $$"
C = "say \"hi\" and 'bye'"
D = "  spaced  out  "
E = "back\\slash\\"
F = ""
G = "%i%n"

[apps.esc.route]
server_name = ["esc.example.org"]
path = "/esc"
params = { GREETING = "semi;colon {brace} \"q\" 'sq' back\\slash 100%", SPACED = "  a  b  " }
static = { "/esc/static/" = "/srv/esc dir/static/" }
""",
    # sd_listen_fds activation, ip-hash with keepalive, every hardening knob off its default,
    # an app name with - and _, two server names with a wildcard, two ports, another conf_dir.
    "edge-listen-fds-ip-hash-keepalive": r"""
version = 1

[defaults]
user = "www-data"
activation = "listen-fds"

[nginx]
user = "www-data"
group = "www-data"
conf_dir = "/etc/nginx/sites-enabled"

[apps.api-v2_x]
command = ["/usr/local/bin/api", "--workers", "1"]
workers = 3
socket_mode = "660"
group = "www-data"
runtime_directory = "api/cache"
restart_sec = 0
memory_max = "infinity"
tasks_max = 16
limit_nofile = 4096
no_new_privileges = false
private_tmp = false
protect_system = "strict"
protect_home = "tmpfs"
private_devices = false
protect_kernel = false
protect_proc = false
restrict_namespaces = false
system_call_filter = false
drop_capabilities = false
restrict_address_families = []
memory_deny_write_execute = true
start_limit_burst = 5
start_limit_interval_sec = 60

[apps.api-v2_x.route]
server_name = ["api.example.org", "*.api.example.org"]
listen = [8080, 8443]
balance = "ip-hash"
keep_conn = true
max_fails = 0
fail_timeout = 1
read_timeout = 86400
""",
    # Several apps on one server (the catch-all `_`) at /, /admin and /docs.v1, least-conn with
    # keepalive on one of them, and an app that nginx does not route to at all.
    "edge-shared-server": r"""
version = 1

[defaults]
user = "www-data"

[nginx]
user = "www-data"

[apps.front]
command = ["/usr/local/bin/front"]
workers = 2

[apps.front.route]
balance = "least-conn"
keep_conn = true
default_server = true

[apps.admin]
command = ["/usr/local/bin/admin", "--mode", "admin"]
workers = 2
socket = "/run/admin/admin-{worker}.sock"

[apps.admin.route]
path = "/admin"
default_server = true
static = { "/admin/assets/" = "/srv/admin/assets/" }

[apps.docs]
command = ["/usr/bin/perl", "/srv/docs/docs.fcgi"]
activation = "listen-fds"

[apps.docs.route]
path = "/docs.v1"
default_server = true
balance = "ip-hash"
params = { SCRIPT_FILENAME = "/srv/docs/docs.fcgi" }

[apps.batch]
description = "queue runner, not routed"
command = ["/usr/local/bin/batch"]
workers = 2
""",
    # No app routed at all (no nginx files), and a single worker on a fixed socket path.
    "edge-no-routes": r"""
version = 1

[nginx]
user = "www-data"

[apps.solo]
command = ["/usr/local/bin/solo"]
socket = "/run/solo/solo.sock"
user = "www-data"
""",
    # A $ in the program path itself (spec accepts it).
    "edge-dollar-in-program-path": r"""
version = 1

[nginx]
user = "www-data"

[apps.pay]
command = ["/opt/pay$day/bin/app", "$arg"]
user = "www-data"

[apps.pay.route]
server_name = ["pay.example.org"]
""",
}

# (check, case) -> why it fails today. Strict xfails: fixing the bug turns them into failures.
# Empty: the `$$` in the program path and over-long socket paths (now a spec error) are fixed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}

CASE_IDS = [*SPEC_FILES, *EDGE_SPECS]


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One spec and everything fcgicompose generates from it."""

    id: str
    spec: Spec
    artifacts: tuple[Artifact, ...]

    def of_kind(self, *kinds: Kind) -> list[Artifact]:
        return [artifact for artifact in self.artifacts if artifact.kind in kinds]

    @property
    def instances(self) -> list[str]:
        """Every socket and service instance the spec asks for."""
        return [
            unit
            for app in self.spec.apps.values()
            for worker in range(1, app.workers + 1)
            for unit in (names.socket_instance(app, worker), names.service_instance(app, worker))
        ]

    @property
    def programs(self) -> list[str]:
        """The programs as the spec names them (not as the units spell them)."""
        return sorted({app.command[0] for app in self.spec.apps.values()})

    @property
    def users(self) -> set[str]:
        return {app.user for app in self.spec.apps.values()}

    @property
    def groups(self) -> set[str]:
        groups = {app.group for app in self.spec.apps.values() if app.group}
        return groups | {self.spec.nginx.socket_group}


@functools.cache
def load_case(case_id: str) -> Case:
    if case_id in SPEC_FILES:
        path = SPEC_FILES[case_id]
        spec = parse_spec(path.read_text(encoding="utf-8"), str(path))
    else:
        spec = parse_spec(EDGE_SPECS[case_id], f"{case_id}.toml")
    return Case(case_id, spec, tuple(ordered(build_graph(spec))))


@pytest.fixture(params=CASE_IDS)
def case(request: pytest.FixtureRequest) -> Case:
    return load_case(request.param)


def expect_known_bug(request: pytest.FixtureRequest, check: str, case: Case) -> None:
    reason = KNOWN_BUGS.get((check, case.id))
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


def unit_files(artifacts: Any) -> dict[str, str]:
    kinds = (Kind.SOCKET_UNIT, Kind.SERVICE_UNIT)
    return {a.path: a.content for a in artifacts if a.kind in kinds}


def enable_links(artifacts: Any) -> dict[str, str]:
    return {a.path: a.link_target for a in artifacts if a.kind is Kind.ENABLE_LINK}


def verify_root(case: Case, root: Path, *, with_programs: bool = True) -> Path:
    return v.build_verify_root(
        root,
        unit_files(case.artifacts),
        enable_links(case.artifacts),
        programs=case.programs if with_programs else (),
        users=case.users,
        groups=case.groups,
    )


def nginx_files(case: Case) -> dict[str, str]:
    """The nginx artifacts by base name; all of them must live in the spec's conf_dir."""
    files = {}
    for artifact in case.of_kind(Kind.NGINX_UPSTREAM, Kind.NGINX_SITE):
        directory, _, name = artifact.path.rpartition("/")
        assert directory == case.spec.nginx.conf_dir, artifact.path
        files[name] = artifact.content
    return files


# ----------------------------------------------------------------------------- systemd


def test_units_pass_systemd_analyze_verify(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    v.require_tools("systemd-analyze")
    expect_known_bug(request, "verify", case)
    root = verify_root(case, tmp_path / "root")
    outcome = v.systemd_verify(root, case.instances)
    assert outcome.ok, f"{case.id}: generated units fail systemd-analyze verify\n{outcome}"


def test_unit_dependencies_resolve(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Requires=/After= (checked by verify --recursive-errors=yes) and Also= name our units."""
    v.require_tools("systemd-analyze")
    expect_known_bug(request, "verify-deps", case)
    root = verify_root(case, tmp_path / "root")
    outcome = v.systemd_verify(root, case.instances, recursive_errors="yes")
    assert outcome.ok, f"{case.id}: a unit dependency does not resolve\n{outcome}"
    # [Install] Also= is not loaded by verify: check it names a socket we generate.
    templates = {a.path.rpartition("/")[2] for a in case.of_kind(Kind.SOCKET_UNIT)}
    for service in case.of_kind(Kind.SERVICE_UNIT):
        also = v.unit_values(service.content, "Install", "Also")
        assert also, f"{service.path}: no Also="
        for name in also:
            template = name.replace("@%i.", "@.")
            assert template in templates, f"{service.path}: Also={name} is not a generated unit"


def test_enable_links_are_what_systemctl_enable_creates(case: Case, tmp_path: Path) -> None:
    v.require_tools("systemctl")
    root = tmp_path / "root"
    v.build_verify_root(root, unit_files(case.artifacts))
    sockets = [
        names.socket_instance(app, worker)
        for app in case.spec.apps.values()
        for worker in range(1, app.workers + 1)
    ]
    outcome, created = v.systemctl_enable_links(root, sockets)
    assert outcome.ok, f"{case.id}: systemctl enable fails on the generated units\n{outcome}"
    assert enable_links(case.artifacts) == created, (
        f"{case.id}: fcgicompose's enablement links differ from systemctl enable's\n{outcome}"
    )


# ----------------------------------------------------------------------------- nginx


def test_nginx_config_passes_nginx_t(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    v.require_tools("nginx", "unshare")
    v.require_netns()
    expect_known_bug(request, "nginx", case)
    outcome = v.nginx_test(tmp_path / "nginx", nginx_files(case))
    assert outcome.ok, f"{case.id}: generated nginx config fails nginx -t\n{outcome}"


# ----------------------------------------------------------------------------- item 10


def test_nginx_sockets_equal_systemd_sockets(case: Case) -> None:
    """Domain item 10: nginx's unix: servers are exactly the sockets systemd listens on."""
    sets = v.socket_sets(case.artifacts)
    assert sets.mismatches() == [], f"{case.id}: {sets}"
    unrouted = {name for name, app in case.spec.apps.items() if app.route is None}
    assert sets.unrouted == unrouted, f"{case.id}: {sets}"
    for name, app in case.spec.apps.items():
        # One socket per worker, none shared.
        assert len(sets.systemd[name]) == app.workers, f"{case.id}: {name}: {sets.systemd[name]}"
    every = [path for paths in sets.systemd.values() for path in paths]
    assert len(every) == len(set(every)), f"{case.id}: a socket is listened on twice: {sets}"


# ----------------------------------------------------------------------------- the checks can fail


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, f"{old!r} not in the unit"
        return text.replace(old, new, 1)

    return edit


BROKEN_UNITS = {
    # name: (file suffix, edit, --recursive-errors, expected text in a complaint)
    "bad-value": (
        ".service",
        _replace("StandardInput=socket", "StandardInput=sockett"),
        "no",
        "sockett",
    ),
    "unknown-key": (".service", _replace("[Service]\n", "[Service]\nFooBar=1\n"), "no", "FooBar"),
    "bad-socket-mode": (
        ".socket",
        _replace("SocketMode=0660", "SocketMode=0x60"),
        "no",
        "Failed to parse mode value",
    ),
    "dangling-requires": (
        ".service",
        _replace("Requires=fcgi-rt@%i.socket", "Requires=fcgi-rtx@%i.socket"),
        "yes",
        "fcgi-rtx@1.socket not found",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_UNITS))
def test_verify_reports_a_broken_unit(breakage: str, tmp_path: Path) -> None:
    v.require_tools("systemd-analyze")
    case = load_case("samples/rt.toml")
    suffix, edit, recursive_errors, expected = BROKEN_UNITS[breakage]
    broken = [
        Artifact(a.kind, a.path, edit(a.content), apps=a.apps) if a.path.endswith(suffix) else a
        for a in case.of_kind(Kind.SOCKET_UNIT, Kind.SERVICE_UNIT)
    ]
    root = verify_root(Case(case.id, case.spec, tuple(broken)), tmp_path / "root")
    outcome = v.systemd_verify(root, case.instances, recursive_errors=recursive_errors)
    assert not outcome.ok, f"helper missed a broken unit ({breakage})\n{outcome}"
    assert any(expected in line for line in outcome.complaints), str(outcome)


# systemd 252 exits 1 on most warnings ("Unknown key", "Failed to parse"), but not on all.
WARNINGS_WITH_EXIT_STATUS_ZERO = {
    # The line names our unit file.
    "obsolete-value": (
        _replace("StandardOutput=journal", "StandardOutput=syslog"),
        "Standard output type syslog is obsolete",
        True,
    ),
    # The line names no unit at all: only the strict mode catches it.
    "lax-user-name": (
        _replace("User=rt\n", "User=0rt!\n"),
        "Accepting user/group name '0rt!'",
        False,
    ),
}


@pytest.mark.parametrize("warning", sorted(WARNINGS_WITH_EXIT_STATUS_ZERO))
def test_verify_warnings_fail_although_the_exit_status_is_zero(
    warning: str, tmp_path: Path
) -> None:
    """verify may exit 0 after a warning: only reading its output catches it."""
    v.require_tools("systemd-analyze")
    case = load_case("samples/rt.toml")
    edit, expected, names_our_unit = WARNINGS_WITH_EXIT_STATUS_ZERO[warning]
    broken = [
        Artifact(a.kind, a.path, edit(a.content), apps=a.apps) if a.kind is Kind.SERVICE_UNIT else a
        for a in case.of_kind(Kind.SOCKET_UNIT, Kind.SERVICE_UNIT)
    ]
    root = verify_root(Case(case.id, case.spec, tuple(broken)), tmp_path / "root")
    outcome = v.systemd_verify(root, case.instances)
    assert outcome.returncode == 0, str(outcome)
    assert not outcome.ok, str(outcome)
    assert any(expected in line for line in outcome.complaints), str(outcome)
    lenient = v.systemd_verify(root, case.instances, strict=False)
    assert lenient.ok is not names_our_unit, str(lenient)


def test_verify_reports_a_missing_program(tmp_path: Path) -> None:
    v.require_tools("systemd-analyze")
    case = load_case("samples/rt.toml")
    root = verify_root(case, tmp_path / "root", with_programs=False)
    outcome = v.systemd_verify(root, case.instances)
    assert not outcome.ok, str(outcome)
    assert any("is not executable" in line for line in outcome.complaints), str(outcome)


def _rt_upstream(text: str) -> bool:
    return "upstream fcgicompose_rt {" in text


NginxEdit = Callable[[dict[str, str]], dict[str, str]]
BROKEN_NGINX: dict[str, tuple[NginxEdit, str]] = {
    # name: (edit of {file name: content}, expected text in a complaint)
    "bad-value": (
        lambda files: {
            n: c.replace("fastcgi_keep_conn off;", "fastcgi_keep_conn maybe;")
            for n, c in files.items()
        },
        'invalid value "maybe" in "fastcgi_keep_conn" directive',
    ),
    "unknown-directive": (
        lambda files: {n: c.replace("fastcgi_pass ", "fastcgi_passs ") for n, c in files.items()},
        'unknown directive "fastcgi_passs"',
    ),
    "unbalanced-brace": (
        lambda files: {n: c.rstrip().removesuffix("}") for n, c in files.items()},
        'unexpected end of file, expecting "}"',
    ),
    "upstream-file-missing": (
        lambda files: {n: c for n, c in files.items() if not _rt_upstream(c)},
        'no port in upstream "fcgicompose_rt"',
    ),
    # nginx -t exits 0 on a [warn]: the helper must still report it.
    "warning-only": (
        lambda files: {
            n: c.replace(
                "upstream fcgicompose_rt {",
                "upstream fcgicompose_rt {\n    keepalive 2;\n    least_conn;",
            )
            for n, c in files.items()
        },
        "load balancing method redefined",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_NGINX))
def test_nginx_t_reports_a_broken_config(breakage: str, tmp_path: Path) -> None:
    v.require_tools("nginx", "unshare")
    v.require_netns()
    edit, expected = BROKEN_NGINX[breakage]
    files = edit(nginx_files(load_case("samples/rt.toml")))
    outcome = v.nginx_test(tmp_path / "nginx", files)
    assert not outcome.ok, f"helper missed a broken nginx config ({breakage})\n{outcome}"
    assert any(expected in line for line in outcome.complaints), str(outcome)
    if breakage == "warning-only":
        assert outcome.returncode == 0, str(outcome)


@pytest.mark.parametrize(
    "breakage",
    ["upstream-drops-a-worker", "socket-moved", "extra-upstream-server", "empty-unix-path"],
)
def test_socket_comparison_reports_a_mismatch(breakage: str) -> None:
    case = load_case("samples/rt.toml")

    def edit(artifact: Artifact) -> Artifact:
        content = artifact.content
        if artifact.kind is Kind.NGINX_UPSTREAM and breakage == "upstream-drops-a-worker":
            content = "\n".join(line for line in content.splitlines() if "rt4.sock" not in line)
        if artifact.kind is Kind.SOCKET_UNIT and breakage == "socket-moved":
            content = content.replace(
                "ListenStream=/run/rt/rt%i.sock", "ListenStream=/run/rt/%i.sock"
            )
        if artifact.kind is Kind.NGINX_UPSTREAM and breakage == "extra-upstream-server":
            content = content.replace("}", '    server "unix:/run/rt/rt5.sock";\n}')
        if artifact.kind is Kind.NGINX_UPSTREAM and breakage == "empty-unix-path":
            content = content.replace("}", "    server unix: down;\n}")
        return Artifact(
            artifact.kind,
            artifact.path,
            content,
            artifact.link_target,
            apps=artifact.apps,
            worker=artifact.worker,
        )

    sets = v.socket_sets(edit(a) for a in case.artifacts)
    assert sets.mismatches(), f"no mismatch found for {breakage}: {sets}"


def test_specifier_expansion() -> None:
    assert v.expand_instance("/run/a%%b/%i.sock", "3") == "/run/a%b/3.sock"
    assert v.expand_instance("/run/%%i", "3") == "/run/%i"
    with pytest.raises(ValueError, match="unexpected specifier"):
        v.expand_instance("/run/%n.sock", "3")
    with pytest.raises(ValueError, match="dangling"):
        v.expand_instance("/run/x%", "3")


def _with_families(unit: str, families: str) -> str:
    return re.sub(r"(?m)^RestrictAddressFamilies=.*$", f"RestrictAddressFamilies={families}", unit)


def test_every_accepted_address_family_is_one_systemd_parses(tmp_path: Path) -> None:
    """The spec's list of families is systemd's: none is silently ignored in the unit."""
    v.require_tools("systemd-analyze")
    case = load_case("samples/rt.toml")
    families = " ".join(sorted(ADDRESS_FAMILIES))
    edited = [
        Artifact(
            a.kind,
            a.path,
            _with_families(a.content, families),
            apps=a.apps,
        )
        if a.kind is Kind.SERVICE_UNIT
        else a
        for a in case.of_kind(Kind.SOCKET_UNIT, Kind.SERVICE_UNIT)
    ]
    assert any(families in a.content for a in edited)
    root = verify_root(Case(case.id, case.spec, tuple(edited)), tmp_path / "root")
    outcome = v.systemd_verify(root, case.instances)
    assert outcome.ok, str(outcome)
    # And the check is live: a family systemd does not know is reported.
    bogus = [
        Artifact(a.kind, a.path, a.content.replace(families, "AF_UNIX AF_BOGUS"), apps=a.apps)
        for a in edited
    ]
    root = verify_root(Case(case.id, case.spec, tuple(bogus)), tmp_path / "bogus")
    outcome = v.systemd_verify(root, case.instances)
    assert any("AF_BOGUS" in line for line in outcome.complaints), str(outcome)
