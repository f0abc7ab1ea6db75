"""Every unit name, file path and upstream name, derived in one place (domain item 10)."""

from __future__ import annotations

import re

from fcgicompose.spec import App, Nginx, Route

SYSTEMD_DIR = "/etc/systemd/system"
SOCKETS_WANTS_DIR = f"{SYSTEMD_DIR}/sockets.target.wants"
STATE_DIR = "/var/lib/fcgicompose"


def unit_prefix(app: App | str) -> str:
    """fcgi-NAME, the stem of an app's template units."""
    return f"fcgi-{app if isinstance(app, str) else app.name}"


def socket_template(app: App | str) -> str:
    return f"{unit_prefix(app)}@.socket"


def service_template(app: App | str) -> str:
    return f"{unit_prefix(app)}@.service"


def socket_instance(app: App | str, worker: int) -> str:
    return f"{unit_prefix(app)}@{worker}.socket"


def service_instance(app: App | str, worker: int) -> str:
    return f"{unit_prefix(app)}@{worker}.service"


def unit_path(unit: str) -> str:
    return f"{SYSTEMD_DIR}/{unit}"


def enable_link_path(app: App | str, worker: int) -> str:
    """Where `systemctl enable fcgi-APP@N.socket` puts its symlink."""
    return f"{SOCKETS_WANTS_DIR}/{socket_instance(app, worker)}"


def upstream_name(app: App | str) -> str:
    return f"fcgicompose_{app if isinstance(app, str) else app.name}".replace("-", "_")


def upstream_path(nginx: Nginx, app: App) -> str:
    return f"{nginx.conf_dir}/fcgicompose-upstream-{app.name}.conf"


def site_path(nginx: Nginx, route: Route) -> str:
    # Host names cannot hold "_", so "_" (any host) and "*" (as "_") never meet a real name.
    slug = re.sub(r"[^A-Za-z0-9.-]", "_", route.server_name[0])
    return f"{nginx.conf_dir}/fcgicompose-site-{slug}-{route.listen[0]}.conf"


# Parse an instance unit name back into (app, worker, suffix).
INSTANCE = re.compile(
    r"fcgi-(?P<app>[a-z][a-z0-9_-]*)@(?P<worker>[0-9]+)\.(?P<suffix>socket|service)"
)
