"""System tests: a real systemd + nginx in a systemd-nspawn container, one per session.

These never skip in CI (CI=true): a missing prerequisite there is a failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SYSTEM_DIR = Path(__file__).resolve().parent
TESTS_DIR = SYSTEM_DIR.parent
PROJECT_DIR = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:  # independent of the pytest import mode
    sys.path.insert(0, str(TESTS_DIR))

from system.container import DEFAULT_ROOTFS, Container, boot_problem  # noqa: E402


def in_ci() -> bool:
    """Whether we run in CI, where system tests must run."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system: boots a systemd-nspawn container (needs root)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every item of the session, not just ours: mark only tests under this dir.
    for item in items:
        if SYSTEM_DIR in item.path.parents:
            item.add_marker(pytest.mark.system)


def _cannot_run(reason: str) -> None:
    if in_ci():
        pytest.fail(f"system tests must run in CI but cannot: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    """One booted container for the whole session; powered off at the end."""
    if os.geteuid() != 0:
        _cannot_run("system tests need root (systemd-nspawn, debootstrap)")
    # Always call it: it returns at once when the cached rootfs is current, rebuilds it when its
    # package list changed (stamp mismatch), and installs systemd-nspawn on a fresh machine.
    build = subprocess.run(
        [str(PROJECT_DIR / "scripts" / "make-rootfs")],
        env={**os.environ, "FCGICOMPOSE_ROOTFS": str(DEFAULT_ROOTFS)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        text=True,
    )
    if build.returncode != 0:
        _cannot_run(f"scripts/make-rootfs failed:\n{build.stdout}{build.stderr}")
    problem = boot_problem()
    if problem is not None:
        _cannot_run(problem)
    with Container(DEFAULT_ROOTFS) as ct:
        yield ct
