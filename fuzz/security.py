"""`python -m fuzz.security`: systemd-analyze security exposure of every sample's services.

Offline (`systemd-analyze security --offline=true --root=ROOT`), so no booted systemd is
needed: the samples' units go into a scratch root (tests/validators.py lays it out), next to
the Debian units given with --compare (default: fcgiwrap.service from the test rootfs), and
each service instance is scored. --dropin FILE adds FILE as a drop-in to every generated
service, to measure a proposed set of hardening options before it goes into the renderer.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fcgicompose import names
from fcgicompose.graph import Kind, build_graph, ordered
from fcgicompose.spec import parse_spec
from tests import validators

PROJECT = Path(__file__).resolve().parent.parent
ROOTFS = Path(os.environ.get("FCGICOMPOSE_ROOTFS", "/var/cache/fcgicompose/rootfs-bookworm"))
DEFAULT_COMPARE = [ROOTFS / "lib/systemd/system/fcgiwrap.service"]


def exposure(root: Path, unit: str) -> str:
    """The overall exposure line of `systemd-analyze security` for one unit."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"},
    )
    found = re.search(r"Overall exposure level for \S+: (.*)", result.stdout)
    return found.group(1).strip() if found else f"(failed: {result.stderr.strip()[:200]})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.security", description=__doc__)
    parser.add_argument("--dropin", type=Path, help="drop-in added to every generated service")
    parser.add_argument("--compare", type=Path, nargs="*", help="other unit files to score")
    args = parser.parse_args(argv)
    compare = args.compare if args.compare is not None else DEFAULT_COMPARE
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fcgicompose-security-") as tmp:
        root = Path(tmp)
        files: dict[str, str] = {}
        programs: set[str] = set()
        units: list[tuple[str, str]] = []
        accounts: set[str] = set()
        for sample in sorted((PROJECT / "samples").glob("*.toml")):
            spec = parse_spec(sample.read_text(encoding="utf-8"), sample.name)
            for artifact in ordered(build_graph(spec)):
                if artifact.kind in (Kind.SOCKET_UNIT, Kind.SERVICE_UNIT):
                    files[artifact.path] = artifact.content
            for app in spec.apps.values():
                programs.add(app.command[0])
                accounts |= {app.user, app.group, spec.nginx.socket_group} - {""}
                units.append((f"samples/{sample.name}", names.service_instance(app, 1)))
                if args.dropin:
                    dropin = f"{names.unit_path(names.service_template(app))}.d/hardening.conf"
                    files[dropin] = args.dropin.read_text(encoding="utf-8")
        validators.build_verify_root(
            root, files, programs=programs, users=accounts, groups=accounts
        )
        for unit_file in compare:
            shutil.copy(unit_file, root / "etc/systemd/system" / unit_file.name)
            for program in re.findall(r"^ExecStart=[-@:+!]*(\S+)", unit_file.read_text(), re.M):
                stub = root / program.lstrip("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)
        for source, unit in units:
            rows.append((source, unit, exposure(root, unit)))
        for unit_file in compare:
            rows.append((str(unit_file), unit_file.name, exposure(root, unit_file.name)))
        verify = validators.systemd_verify(root, [unit for _, unit in units])
    width = max(len(source) + len(unit) for source, unit, _ in rows) + 3
    for source, unit, level in rows:
        print(f"{source + ': ' + unit:<{width}} {level}")
    print(f"systemd-analyze verify of the generated services: {'clean' if verify.ok else verify}")
    return 0 if verify.ok else 1


if __name__ == "__main__":
    sys.exit(main())
