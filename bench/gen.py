"""Synthetic specs: N apps x 8 workers, mixed activation kinds, shared and separate servers.

Deterministic: the same N always gives the same text, so runs and machines compare.

Per app i (name ``aNNNNN``), by ``i % 10``:

* 0-5 (60 %): routed on a *shared* server ``shared-G.example.org`` (G = i // 40, so about 24
  apps per server block), each app at its own sub-path ``/aNNNNN``;
* 6-8 (30 %): routed on a *separate* server ``aNNNNN.example.org`` at ``/`` (every other one
  also on port 8080, some least-conn);
* 9 (10 %): not routed (no nginx files).

Every third app is ``listen-fds`` (fcgiwrap with a SCRIPT_FILENAME param), the rest ``fd0``
(a Perl FCGI program). Some apps carry static locations, memory limits and extra environment.

The "10 % changed" variant changes exactly ``N // 10`` apps (a fixed pseudo-random sample):
each gets one more environment variable (its service unit changes) and, when routed, another
``max_fails`` (its upstream file changes). Both files belong to that app alone, so the plan
must report changes for exactly those apps and no other.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

WORKERS = 8
SOURCE_NAME = "bench.toml"  # the file name every spec is written as (it appears in headers)


def app_name(i: int) -> str:
    return f"a{i:05d}"


def changed_apps(n: int) -> list[str]:
    """The apps the 10 %-changed variant modifies: exactly n // 10 of them."""
    return sorted(app_name(i) for i in random.Random(20_240_505 + n).sample(range(n), n // 10))


def spec_text(n: int, changed: Iterable[str] = ()) -> str:
    """The TOML text of a spec with `n` apps; apps named in `changed` get the variant."""
    changed_set = set(changed)
    out = [
        "#:schema ../schemas/fcgicompose.schema.json",
        f"# Synthetic benchmark spec: {n} apps x {WORKERS} workers (bench/gen.py).",
        "version = 1",
        "",
        "[defaults]",
        'user = "www-data"',
        "restart_sec = 2",
        'environment = { LANG = "C.UTF-8" }',
        "",
        "[nginx]",
        'user = "www-data"',
        'conf_dir = "/etc/nginx/conf.d"',
        "",
    ]
    for i in range(n):
        out += _app(i, app_name(i) in changed_set)
    return "\n".join(out) + "\n"


def _app(i: int, changed: bool) -> list[str]:
    name = app_name(i)
    kind = i % 10
    listen_fds = i % 3 == 2
    lines = [f"[apps.{name}]", f'description = "Synthetic app {i} ({name})"']
    if listen_fds:
        lines += [
            'command = ["/usr/sbin/fcgiwrap", "-c", "4"]',
            'activation = "listen-fds"',
        ]
    else:
        lines.append(
            f'command = ["/usr/bin/perl", "/srv/{name}/app.fcgi", "--config", "/etc/{name}.conf"]'
        )
    lines += [f"workers = {WORKERS}", f'socket = "/run/{name}/w{{worker}}.sock"']
    env = {"APP_HOME": f"/srv/{name}", "APP_NAME": name}
    if changed:
        env["BENCH_REVISION"] = "2"
    lines.append(
        "environment = { " + ", ".join(f'{k} = "{v}"' for k, v in sorted(env.items())) + " }"
    )
    if i % 4 == 0:
        lines.append('memory_max = "512M"')
    if i % 7 == 0:
        lines.append("tasks_max = 64")
    if kind == 9:
        return [*lines, ""]
    lines += ["", f"[apps.{name}.route]"]
    if kind <= 5:
        lines += [f'server_name = ["shared-{i // 40}.example.org"]', f'path = "/{name}"']
        if i % 5 == 0:
            lines.append(f'static = {{ "/{name}/static/" = "/srv/{name}/static/" }}')
    else:
        servers = [f"{name}.example.org", f"www.{name}.example.org"]
        lines.append("server_name = [" + ", ".join(f'"{s}"' for s in servers) + "]")
        if i % 2 == 0:
            lines.append("listen = [80, 8080]")
        if i % 4 == 3:
            lines.append('balance = "least-conn"')
    if listen_fds:
        lines.append(
            'params = { SCRIPT_FILENAME = "/usr/lib/cgit/cgit.cgi", CGIT_CONFIG = "/etc/cgitrc" }'
        )
    if changed:
        lines.append("max_fails = 5")
    return [*lines, ""]
