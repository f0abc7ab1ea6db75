"""One measurement in a fresh process: `python -m bench.worker OP ...` prints one JSON line.

The parent (bench/__main__.py) starts one worker per run and reads the worker's peak memory
with os.wait4() (ru_maxrss of the whole process: interpreter, imports and the operation). The
worker times only the operation itself with time.perf_counter(), imports excluded, and also
reports its ru_maxrss just before the operation, so the operation's own share can be told apart.

Operations (each reads what it needs before the clock starts, except the spec, whose reading is
part of compile and plan):

  compile  load_spec (read + parse + validate) + build_graph (renders every file) + ordered
  plan     workflow.plan_spec_file, exactly what `fcgicompose plan` does minus printing: when
           the spec and version match the last apply, hash the recorded files and stop; else
           load_spec + read_accounts + plan_for (reads the root and the record, diffs)
  apply    plan as above + apply_plan into an empty root (writes, fsyncs, record)
  floor    the I/O floor: lstat every path plan reads; read + sha256 each regular file, readlink
           each symlink; read + sha256 the record file. Nothing else.
  profile  cProfile of one plan (with --apply: plan + apply into an empty root); top functions

Like the `fcgicompose` command, the worker first calls cli.tune_collector() (the cycle collector
runs rarely), so what is timed is what a user's command would spend.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import stat
import sys
import time
from pathlib import Path
from typing import Any


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _import_plan() -> None:
    """Import what plan needs before any clock starts (imports are start-up, measured apart)."""
    import fcgicompose.apply
    import fcgicompose.spec
    import fcgicompose.state
    import fcgicompose.workflow  # noqa: F401


def _plan(spec_path: Path, root: Path) -> tuple[Any, dict[str, float]]:
    from fcgicompose.workflow import plan_spec_file

    phases: dict[str, float] = {}
    plan, _ = plan_spec_file(spec_path, str(spec_path), root, timings=phases)
    return plan, phases


def _summary(plan: Any) -> dict[str, Any]:
    changes = plan.changes
    return {
        "files": len(plan.files),
        "changes": len(changes),
        "has_changes": plan.has_changes,
        "changed_apps": sorted({app for change in changes for app in change.apps}),
        "counts": {str(kind): count for kind, count in plan.counts().items() if count},
        "blockers": len(plan.blockers),
        "drift": len(plan.drift),
    }


def op_compile(args: argparse.Namespace) -> dict[str, Any]:
    from fcgicompose.graph import build_graph, ordered
    from fcgicompose.spec import load_spec

    before = _rss_kib()
    t0 = time.perf_counter()
    spec = load_spec(args.spec, str(args.spec))
    t1 = time.perf_counter()
    desired = list(ordered(build_graph(spec)))
    t2 = time.perf_counter()
    if args.dump_paths:
        args.dump_paths.write_text("".join(a.path + "\n" for a in desired))
    return {
        "seconds": t2 - t0,
        "phases": {"load": t1 - t0, "graph": t2 - t1},
        "rss_before_kib": before,
        "artifacts": len(desired),
        "apps": len(spec.apps),
    }


def op_plan(args: argparse.Namespace) -> dict[str, Any]:
    _import_plan()
    before = _rss_kib()
    t0 = time.perf_counter()
    plan, phases = _plan(args.spec, args.root)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "phases": phases, "rss_before_kib": before, **_summary(plan)}


def op_apply(args: argparse.Namespace) -> dict[str, Any]:
    from fcgicompose.apply import apply_plan

    if args.root.exists() and any(args.root.iterdir()):
        raise SystemExit(f"apply: {args.root} is not empty")
    _import_plan()
    args.root.mkdir(parents=True, exist_ok=True)
    before = _rss_kib()
    t0 = time.perf_counter()
    plan, phases = _plan(args.spec, args.root)
    t1 = time.perf_counter()
    outcome = apply_plan(plan, args.root)
    t2 = time.perf_counter()
    phases["apply_plan"] = t2 - t1
    return {
        "seconds": t2 - t0,
        "phases": phases,
        "rss_before_kib": before,
        "files_written": outcome.files_written,
        **_summary(plan),
    }


def op_floor(args: argparse.Namespace) -> dict[str, Any]:
    root = str(args.root).rstrip("/")
    paths = [root + p for p in args.paths.read_text().split("\n") if p]
    record = root + "/var/lib/fcgicompose/state.json"
    before = _rss_kib()
    t0 = time.perf_counter()
    files = links = missing = 0
    with open(record, "rb") as handle:
        hashlib.sha256(handle.read()).hexdigest()
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            missing += 1
            continue
        if stat.S_ISLNK(info.st_mode):
            os.readlink(path)
            links += 1
        elif stat.S_ISREG(info.st_mode):
            with open(path, "rb") as handle:
                hashlib.sha256(handle.read()).hexdigest()
            files += 1
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "rss_before_kib": before,
        "files": files + 1,
        "links": links,
        "missing": missing,
    }


def op_profile(args: argparse.Namespace) -> dict[str, Any]:
    """cProfile one `plan` (or, with --apply, one plan + apply into an empty root)."""
    import cProfile
    import pstats

    from fcgicompose.apply import apply_plan

    _import_plan()
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    plan, phases = _plan(args.spec, args.root)
    if args.apply:
        apply_plan(plan, args.root)
    profiler.disable()
    seconds = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    if args.dump_stats:
        stats.dump_stats(str(args.dump_stats))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in raw.values())
    rows = []
    for (filename, line, function), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": function,
                "where": f"{_short(filename)}:{line}",
                "calls": ncalls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    return {
        "seconds": seconds,
        "profiled_total": total,
        "phases": phases,
        "by_tottime": sorted(rows, key=lambda r: -r["tottime"])[: args.top],
        "fcgicompose_by_cumtime": sorted(
            (r for r in rows if r["where"].startswith("fcgicompose/")),
            key=lambda r: -r["cumtime"],
        )[: args.top],
        **_summary(plan),
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail if marker == "site-packages/" else "stdlib:" + tail.split("/", 1)[-1]
    here = str(Path(__file__).resolve().parent.parent) + "/"
    return filename.replace(here, "")


OPS = {
    "compile": op_compile,
    "plan": op_plan,
    "apply": op_apply,
    "floor": op_floor,
    "profile": op_profile,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("op", choices=sorted(OPS))
    parser.add_argument("--spec", type=Path)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--paths", type=Path, help="floor: file listing the artifact paths")
    parser.add_argument("--dump-paths", type=Path, help="compile: write the artifact paths")
    parser.add_argument("--dump-stats", type=Path, help="profile: write pstats data here")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--apply", action="store_true", help="profile: also apply the plan")
    args = parser.parse_args(argv)
    from fcgicompose.cli import tune_collector

    tune_collector()  # as `fcgicompose` does for every command
    result = OPS[args.op](args)
    result["rss_after_kib"] = _rss_kib()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
