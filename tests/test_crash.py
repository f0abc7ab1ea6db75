"""kill -9 of apply at every file-system step: afterwards the files are wholly old or wholly new.

A subprocess applies a change and dies (os._exit, like kill -9: no cleanup, no finally) right
before its k-th rename or unlink; `fcgicompose recover` then runs, and the whole tree under the
root — files, links, record — must equal the old generation or the new one exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT

OLD = """version = 1
[defaults]
user = "www-data"
[apps.a]
command = ["/usr/bin/a"]
workers = 3
[apps.a.route]
server_name = ["a.example.org"]
[apps.gone]
command = ["/usr/bin/gone"]
[apps.gone.route]
server_name = ["gone.example.org"]
"""
# Updates (environment, upstream), deletions (worker 3, app gone) and creations (app new).
NEW = OLD.replace("workers = 3", 'workers = 2\nenvironment = { X = "1" }').replace("gone", "new")

CRASHING_APPLY = """
import os, sys
from fcgicompose.cli import main
limit, calls = int(os.environ["CRASH_AT"]), [0]
def dying(real):
    def step(*args, **kwargs):
        if calls[0] == limit:
            os._exit(137)
        calls[0] += 1
        return real(*args, **kwargs)
    return step
os.rename, os.unlink = dying(os.rename), dying(os.unlink)
sys.argv = ["fcgicompose", *sys.argv[1:]]
main()
"""


def fcgicompose(*args: str, crash_at: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    if crash_at is not None:
        env["CRASH_AT"] = str(crash_at)
        argv = [sys.executable, "-c", CRASHING_APPLY, *args]
    else:
        argv = [sys.executable, "-m", "fcgicompose", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=PROJECT, check=False)


def tree(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file() and path.name not in ("lock", ".journal.json.fcgicompose-tmp"):
            # (an unfinished journal is the tool's private scratch, removed by the next run)
            found[name] = path.read_text()
    return found


@pytest.fixture(scope="module")
def generations(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A root at the old generation (to copy), and the trees of both generations."""
    work = tmp_path_factory.mktemp("gens")
    (work / "old.toml").write_text(OLD)
    old_root, new_root = work / "old-root", work / "new-root"
    for root in (old_root, new_root):
        foreign = root / "etc/nginx/conf.d/default.conf"
        foreign.parent.mkdir(parents=True)
        foreign.write_text("# not fcgicompose's\n")
        assert (
            fcgicompose(
                "apply", str(work / "old.toml"), "--root", str(root), "--auto-approve"
            ).returncode
            == 0
        )
    # Same spec file name both times, as in real use: copy the new spec over the old one.
    new_spec = work / "spec" / "old.toml"
    new_spec.parent.mkdir()
    new_spec.write_text(NEW)
    result = fcgicompose("apply", str(new_spec), "--root", str(new_root), "--auto-approve")
    assert result.returncode == 0, result.stderr
    return old_root, tree(old_root), tree(new_root)


def test_every_crash_point_recovers_to_old_or_new(
    generations: tuple[Path, dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    old_root, old_tree, new_tree = generations
    spec = old_root.parent / "spec" / "old.toml"
    outcomes = []
    for crash_at in range(100):
        root = tmp_path / f"root-{crash_at}"
        shutil.copytree(old_root, root, symlinks=True)
        crashed = fcgicompose(
            "apply", str(spec), "--root", str(root), "--auto-approve", crash_at=crash_at
        )
        if crashed.returncode == 0:
            assert tree(root) == new_tree
            break
        assert crashed.returncode == 137, crashed.stderr
        if fcgicompose("plan", str(spec), "--root", str(root)).returncode == 1:
            outcomes.append("journal")
            assert fcgicompose("recover", "--root", str(root)).returncode == 0
        after = tree(root)
        assert after in (old_tree, new_tree), f"crash before step {crash_at} left a mixed tree"
        outcomes.append("old" if after == old_tree else "new")
        # And apply goes on from there to the new generation.
        assert (
            fcgicompose("apply", str(spec), "--root", str(root), "--auto-approve").returncode == 0
        )
        assert tree(root) == new_tree
    else:
        pytest.fail("apply never completed within 100 steps")
    assert crash_at > 10, "the change should take many file-system steps"
    assert "journal" in outcomes
