"""The Ansible side of the comparison: its own venv, the variables, one timed playbook run.

ansible-core is installed from PyPI into a venv of its own (bench/.venv-ansible, or
$FCGICOMPOSE_BENCH_ANSIBLE_VENV), never into the project's .venv. The playbook
(bench/ansible/playbook.yml) renders the same files with the `template` module and makes the
same enablement links with the `file` module, `connection: local`, and runs with
`--check --diff` against the root fcgicompose applied, i.e. the Ansible counterpart of a
no-change `fcgicompose plan`.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import attrs

from fcgicompose.spec import Spec

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "ansible" / "playbook.yml"
DEFAULT_VENV = HERE / ".venv-ansible"
ANSIBLE_REQUIREMENT = "ansible-core"


def venv_dir() -> Path:
    return Path(os.environ.get("FCGICOMPOSE_BENCH_ANSIBLE_VENV", DEFAULT_VENV))


def playbook_command() -> Path:
    return venv_dir() / "bin" / "ansible-playbook"


def installed() -> bool:
    return playbook_command().exists()


def install(log: Any = print) -> bool:
    """Create the separate venv with ansible-core; False (with a message) if that fails."""
    if installed():
        return True
    venv = venv_dir()
    log(f"installing {ANSIBLE_REQUIREMENT} into {venv} (separate from .venv) ...")
    python = shutil.which("python3") or sys.executable
    try:
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                ANSIBLE_REQUIREMENT,
            ],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        log(f"could not install {ANSIBLE_REQUIREMENT}: {error}; skipping the Ansible comparison")
        return False
    return installed()


def version() -> str:
    out = subprocess.run(
        [str(playbook_command()), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"\[core ([^\]]+)\]", out)
    return match.group(1) if match else "?"


# ----------------------------------------------------------------------------- variables


def _plain(value: Any) -> Any:
    """attrs models, enums, tuples and mapping proxies as plain JSON values."""
    if attrs.has(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def variables(spec: Spec, root: Path, sample: Collection[str] | None = None) -> dict[str, Any]:
    """The inventory an Ansible user would keep: the apps' settings, grouped by server.

    With `sample` (app names) only those apps' files, their first worker's link and the server
    blocks they are mounted on are rendered: a quick equivalence check, not a timing.
    """
    apps = [_plain(app) for app in spec.apps.values()]
    sites: dict[str, dict[str, Any]] = {}
    for app in apps:
        route = app["route"]
        if route is None:
            continue
        key = json.dumps([route["server_name"], route["listen"]])
        site = sites.setdefault(
            key, {"server_name": route["server_name"], "listen": route["listen"], "apps": []}
        )
        site["apps"].append(app)
    links = [[a["name"], w] for a in apps for w in range(1, a["workers"] + 1)]
    site_list = list(sites.values())
    if sample is not None:
        chosen = set(sample)
        apps = [a for a in apps if a["name"] in chosen]
        links = [link for link in links if link[0] in chosen and link[1] == 1]
        site_list = [s for s in site_list if chosen & {a["name"] for a in s["apps"]}]
    return {
        "fcgi_root": str(root.resolve()),
        "fcgi_source": spec.source,
        "fcgi_nginx": _plain(spec.nginx),
        "fcgi_apps": apps,
        "fcgi_links": links,
        "fcgi_sites": site_list,
    }


def items(variables: Mapping[str, Any]) -> int:
    """How many files and links the playbook checks (one module run each)."""
    apps = variables["fcgi_apps"]
    routed = sum(1 for a in apps if a["route"])
    return 2 * len(apps) + len(variables["fcgi_links"]) + routed + len(variables["fcgi_sites"])


# ----------------------------------------------------------------------------- running


@attrs.frozen
class AnsibleRun:
    seconds: float
    maxrss_kib: int
    returncode: int
    ok: int
    changed: int
    failed: int
    log: str


_RECAP = re.compile(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)")


def run_check(vars_file: Path, work: Path, log_file: Path) -> AnsibleRun:
    """`ansible-playbook --check --diff` with the variables; wall time and peak RSS (wait4)."""
    home = work / "ansible-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PYTHON_INTERPRETER": str(venv_dir() / "bin" / "python"),
    }
    argv = [
        str(playbook_command()),
        "-i",
        "localhost,",
        "--check",
        "--diff",
        "-e",
        f"@{vars_file}",
        str(PLAYBOOK),
    ]
    with log_file.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_file.read_text(errors="replace")
    match = _RECAP.search(text)
    ok, changed, failed = (int(g) for g in match.groups()) if match else (0, -1, -1)
    return AnsibleRun(seconds, usage.ru_maxrss, proc.returncode, ok, changed, failed, str(log_file))
