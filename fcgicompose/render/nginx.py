"""nginx upstream and server blocks (domain items 14-18)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from fcgicompose import names
from fcgicompose.render import header
from fcgicompose.spec import App, Balance

_BALANCE_DIRECTIVE = {
    Balance.ROUND_ROBIN: "",  # nginx's default; nothing to write
    Balance.LEAST_CONN: "least_conn;",
    Balance.IP_HASH: "ip_hash;",
}

# One value per name; user params replace these by name, never add a second line (item 16).
_BASE_PARAMS = (
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("REQUEST_URI", "$request_uri"),
    ("DOCUMENT_URI", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https if_not_empty"),
    ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "nginx/$nginx_version"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("SERVER_ADDR", "$server_addr"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
)


def quote(value: str) -> str:
    """A user's value as one nginx token that cannot end the directive or open a block."""
    # A tab is fine inside quotes; line breaks and other controls are refused by the spec.
    if "$" in value or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
        # The spec loader rejects these; nginx has no escape for '$'.
        raise ValueError(f"value {value!r} cannot be written safely into nginx config")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_upstream(app: App, source: str) -> str:
    """The upstream of an app: exactly the sockets its socket units listen on (item 10)."""
    assert app.route is not None
    route = app.route
    lines = [header("#", source, f"app {app.name}"), f"upstream {names.upstream_name(app)} {{"]
    if _BALANCE_DIRECTIVE[route.balance]:
        lines.append(f"    {_BALANCE_DIRECTIVE[route.balance]}")
    for worker in range(1, app.workers + 1):
        lines.append(
            f"    server {quote('unix:' + app.socket_path(worker))}"
            f" max_fails={route.max_fails} fail_timeout={route.fail_timeout}s;"
        )
    if route.keep_conn:
        lines.append(f"    keepalive {app.workers};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_site(apps: Sequence[App], source: str) -> str:
    """One server block for the apps sharing a server_name/listen pair."""
    route = apps[0].route
    assert route is not None
    mounted = ", ".join(app.name for app in apps)
    lines = [header("#", source, f"apps {mounted}"), "server {"]
    default = " default_server" if route.default_server else ""
    lines += [f"    listen {port}{default};" for port in route.listen]
    lines.append(f"    server_name {' '.join(route.server_name)};")
    for app in sorted(apps, key=lambda a: a.route.path if a.route else ""):
        lines += _app_locations(app)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _app_locations(app: App) -> list[str]:
    route = app.route
    assert route is not None
    lines: list[str] = []
    for location, directory in sorted(route.static.items()):
        lines += [
            "",
            f"    location ^~ {quote(location)} {{",
            f"        alias {quote(directory)};",
            "    }",
        ]
    if route.path == "/":
        prefix = "/"
        script_name, path_info = '""', "$uri"
    else:
        prefix = route.path + "/"
        # Redirect the bare mount point so relative links inside the app resolve.
        lines += [
            "",
            f"    location = {quote(route.path)} {{",
            # The query string goes along; $is_args$args are ours, after the quoted prefix.
            f'        return 301 {quote(prefix)[:-1]}$is_args$args";',
            "    }",
        ]
        script_name, path_info = "$fastcgi_script_name", "$fastcgi_path_info"
    params = dict(_BASE_PARAMS)
    params["SCRIPT_NAME"] = script_name
    params["PATH_INFO"] = path_info
    for name, value in route.params.items():
        params[name] = quote(value)
    lines += [
        "",
        f"    location {quote(prefix)} {{",
        f"        fastcgi_pass {names.upstream_name(app)};",
        f"        fastcgi_keep_conn {'on' if route.keep_conn else 'off'};",
        # Retry another worker only when the request never reached one (item 18).
        "        fastcgi_next_upstream error timeout;",
        f"        fastcgi_read_timeout {route.read_timeout}s;",
    ]
    if route.path != "/":
        # The path is letters, digits and . _ ~ - only (spec pattern): '.' is the one regex
        # metacharacter among them, and the token needs no quotes.
        literal = route.path.replace(".", r"\.")
        # (?s): a %0A in the URI is a newline that '.' would not match; the split would fail
        # and SCRIPT_NAME become the whole URI, chosen by the client.
        lines.append(f"        fastcgi_split_path_info (?s)^({literal})(/.*)$;")
    lines += [f"        fastcgi_param {name} {value};" for name, value in sorted(params.items())]
    lines.append("    }")
    return lines
