"""The benchmark driver behind `python -m bench` (see docs/benchmarks.md).

For each size (10, 100, 1,000, 5,000 apps x 8 workers) it writes a synthetic spec and its
"10 % changed" variant (bench/gen.py), then measures, one fresh worker process per run
(bench/worker.py):

  compile   parse + validate + graph + render
  apply     plan + apply into an empty root (the first run's root is kept for the rest)
  plan      against that up-to-date root: must report no change
  plan 10%  the changed variant against it: must report changes for exactly 10 % of the apps
  floor     read + sha256 exactly the files plan reads (artifact paths + record file)
  CLI plan  `fcgicompose plan SPEC --root ROOT --detailed-exitcode`, wall time incl. start-up
  Ansible   `ansible-playbook --check --diff` of the equivalent templates against that root

Times are medians of several runs with their spread; peak memory is the ru_maxrss that
os.wait4() reports for each run's process. Results are printed as tables and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import ansible_side, gen

PROJECT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES = (10, 100, 1000, 5000)
SPEC_NAME = gen.SOURCE_NAME

# Targets (docs/benchmarks.md).
PLAN_FLOOR_MAX = 2.0  # plan at 1,000 apps <= 2x the I/O floor
ANSIBLE_MIN = 20.0  # >= 20x faster than Ansible
LINEAR_MAX = 5.5  # time(5,000) / time(1,000) <= 5.5
VERSION_MAX = 0.15  # seconds for `fcgicompose --version`
# The apps the smoke run's Ansible equivalence check renders: listen-fds on a shared server,
# fd0 on a separate server with two ports, and an app without a route.
SMOKE_ANSIBLE_SAMPLE = (gen.app_name(2), gen.app_name(6), gen.app_name(9))

OPS = ("compile", "plan", "plan10", "apply", "floor", "cli_plan")
OP_TITLES = {
    "compile": "compile",
    "plan": "plan (no change)",
    "plan10": "plan (10% changed)",
    "apply": "apply (empty root)",
    "floor": "I/O floor",
    "cli_plan": "CLI plan (wall)",
    "ansible": "Ansible --check",
}

Log = Callable[[str], None]


class BenchError(Exception):
    """A run failed or produced a result that makes the figures meaningless."""


# ----------------------------------------------------------------------------- processes


def _fcgicompose_cli() -> list[str]:
    script = Path(sys.executable).parent / "fcgicompose"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fcgicompose"]


def _wait(proc: subprocess.Popen[bytes], started: float) -> tuple[int, float, int]:
    """Reap `proc` with wait4: (exit code, wall seconds, ru_maxrss in KiB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss


def run_worker(op: str, work: Path, **options: Any) -> dict[str, Any]:
    """One measurement in a fresh process (bench/worker.py); adds wall time and peak RSS."""
    argv = [sys.executable, "-m", "bench.worker", op]
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    errors = work / "worker.stderr"
    with errors.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        code, wall, maxrss = _wait(proc, started)
    if code != 0:
        raise BenchError(
            f"worker {op} failed (exit {code}):\n{errors.read_text(errors='replace')[-3000:]}"
        )
    result: dict[str, Any] = json.loads(out)
    result["wall"] = wall
    result["maxrss_kib"] = maxrss
    return result


def run_cli_plan(spec: Path, root: Path) -> dict[str, Any]:
    argv = [*_fcgicompose_cli(), "plan", str(spec), "--root", str(root), "--detailed-exitcode"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code, wall, maxrss = _wait(proc, started)
    return {"seconds": wall, "wall": wall, "maxrss_kib": maxrss, "exit": code}


def measure_version(runs: int) -> dict[str, Any]:
    """Wall time of `fcgicompose --version` (the installed console script)."""
    argv = [*_fcgicompose_cli(), "--version"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return {"command": " ".join(argv), **_stats(times)}


# ----------------------------------------------------------------------------- statistics


def _stats(values: Sequence[float]) -> dict[str, Any]:
    median = statistics.median(values)
    return {
        "runs": list(values),
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else 0.0,
    }


def _summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary = _stats([r["seconds"] for r in results])
    summary["maxrss_kib"] = statistics.median(r["maxrss_kib"] for r in results)
    befores = [r["rss_before_kib"] for r in results if "rss_before_kib" in r]
    if befores:
        summary["rss_before_kib"] = statistics.median(befores)
    phases: dict[str, list[float]] = {}
    for r in results:
        for name, value in r.get("phases", {}).items():
            phases.setdefault(name, []).append(value)
    summary["phases"] = {name: statistics.median(v) for name, v in phases.items()}
    return summary


# ----------------------------------------------------------------------------- one size


def bench_size(
    n: int, runs: int, work: Path, log: Log, keep_roots: bool = False
) -> tuple[dict[str, Any], Path, Path]:
    """Measure every fcgicompose operation for `n` apps; returns results, spec and root."""
    base = work / f"{n}"
    same, changed = base / "spec", base / "spec-changed"
    same.mkdir(parents=True)
    changed.mkdir()
    spec = same / SPEC_NAME
    spec_changed = changed / SPEC_NAME
    spec.write_text(gen.spec_text(n))
    expected_changed = gen.changed_apps(n)
    spec_changed.write_text(gen.spec_text(n, expected_changed))
    paths_file = base / "paths.txt"
    root = base / "root"
    out: dict[str, Any] = {"apps": n, "workers": gen.WORKERS, "runs": runs}
    raw: dict[str, list[dict[str, Any]]] = {op: [] for op in OPS}
    problems: list[str] = []

    log(f"[{n} apps] compile x{runs}")
    for i in range(runs):
        raw["compile"].append(
            run_worker("compile", work, spec=spec, dump_paths=paths_file if i == 0 else None)
        )
    artifacts = raw["compile"][0]["artifacts"]
    out["artifacts"] = artifacts
    out["spec_lines"] = spec.read_text().count("\n")

    log(f"[{n} apps] apply into an empty root x{runs}")
    for i in range(runs):
        target = root if i == 0 else base / f"apply-{i}"
        result = run_worker("apply", work, spec=spec, root=target)
        raw["apply"].append(result)
        if result["files_written"] != artifacts:
            problems.append(f"apply wrote {result['files_written']} files, not {artifacts}")
        if target != root:
            shutil.rmtree(target)

    log(f"[{n} apps] plan, no change x{runs}")
    for _ in range(runs):
        result = run_worker("plan", work, spec=spec, root=root)
        raw["plan"].append(result)
        if result["has_changes"] or result["blockers"] or result["drift"]:
            problems.append(f"the no-change plan reports changes: {result['counts']}")

    log(f"[{n} apps] plan, 10% of apps changed x{runs}")
    for _ in range(runs):
        result = run_worker("plan", work, spec=spec_changed, root=root)
        raw["plan10"].append(result)
        if result["changed_apps"] != expected_changed:
            problems.append(
                f"the 10%-changed plan reports changes for {len(result['changed_apps'])} apps, "
                f"expected exactly {len(expected_changed)}"
            )

    log(f"[{n} apps] I/O floor x{runs}")
    for _ in range(runs):
        result = run_worker("floor", work, root=root, paths=paths_file)
        raw["floor"].append(result)
        if result["missing"] or result["files"] + result["links"] != artifacts + 1:
            problems.append(f"the floor found {result} for {artifacts} artifacts + record")

    log(f"[{n} apps] CLI plan x{runs}")
    for _ in range(runs):
        result = run_cli_plan(spec, root)
        raw["cli_plan"].append(result)
        if result["exit"] != 0:
            problems.append(f"`fcgicompose plan --detailed-exitcode` exited {result['exit']}")

    out["ops"] = {op: _summarize(results) for op, results in raw.items()}
    out["plan10_changed_apps"] = len(raw["plan10"][0]["changed_apps"])
    out["plan10_changed_files"] = raw["plan10"][0]["changes"]
    out["plan_changes"] = raw["plan"][0]["changes"]
    out["problems"] = sorted(set(problems))
    return out, spec, root


def bench_ansible(
    n: int, spec: Path, root: Path, work: Path, log: Log, sample: Sequence[str] | None = None
) -> dict[str, Any]:
    """One `ansible-playbook --check --diff` run against the up-to-date root."""
    from fcgicompose.spec import load_spec

    variables = ansible_side.variables(load_spec(spec, str(spec)), root, sample)
    vars_file = work / f"{n}" / "ansible-vars.json"
    vars_file.write_text(json.dumps(variables))
    count = ansible_side.items(variables)
    what = f"sample of {len(sample)} apps, {count} items" if sample else f"{count} items"
    log(f"[{n} apps] ansible-playbook --check --diff ({what}; about 0.3 s per item)")
    run = ansible_side.run_check(vars_file, work, work / f"{n}" / "ansible.log")
    result = {
        "seconds": run.seconds,
        "maxrss_kib": run.maxrss_kib,
        "items": count,
        "sample": list(sample) if sample else None,
        "exit": run.returncode,
        "changed": run.changed,
        "failed": run.failed,
        "per_item": run.seconds / count,
    }
    problems = []
    if run.returncode != 0 or run.failed:
        problems.append(f"ansible-playbook failed (exit {run.returncode}); see {run.log}")
    elif run.changed != 0:
        problems.append(
            f"Ansible would change {run.changed} task(s): its templates no longer produce what "
            f"fcgicompose renders (see {run.log})"
        )
    result["problems"] = problems
    return result


# ----------------------------------------------------------------------------- profile


def bench_profile(n: int, spec: Path, root: Path, work: Path, log: Log) -> dict[str, Any]:
    log(f"[{n} apps] cProfile of plan and of apply")
    RESULTS_DIR.mkdir(exist_ok=True)
    plan = run_worker(
        "profile", work, spec=spec, root=root, dump_stats=RESULTS_DIR / f"plan-{n}.pstats"
    )
    target = work / f"{n}" / "profile-apply"
    apply = run_worker(
        "profile",
        work,
        spec=spec,
        root=target,
        apply=True,
        dump_stats=RESULTS_DIR / f"apply-{n}.pstats",
    )
    shutil.rmtree(target, ignore_errors=True)
    return {"apps": n, "plan": plan, "apply": apply}


# ----------------------------------------------------------------------------- derived


def _median(sizes: dict[int, Any], n: int, op: str) -> float | None:
    entry = sizes.get(n)
    return entry["ops"][op]["median"] if entry else None


def ansible_estimates(ansible: dict[int, Any], sizes: dict[int, Any]) -> dict[int, Any]:
    """Ansible time for every size: measured, or a linear fit over items (labelled)."""
    measured = {n: a for n, a in ansible.items() if not a.get("sample")}
    out: dict[int, Any] = {}
    points = sorted((a["items"], a["seconds"]) for a in measured.values())
    if len(points) >= 2:
        (x0, y0), (x1, y1) = points[0], points[-1]
        slope = (y1 - y0) / (x1 - x0)
        intercept = y0 - slope * x0
    elif points:
        slope, intercept = points[0][1] / points[0][0], 0.0
    else:
        return out
    for n, entry in sizes.items():
        if n in measured:
            out[n] = {"seconds": measured[n]["seconds"], "measured": True}
        else:
            out[n] = {"seconds": intercept + slope * entry["artifacts"], "measured": False}
    return out


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    sizes = results["sizes"]
    estimates = ansible_estimates(results["ansible"], sizes)
    per_size = {}
    for n, entry in sizes.items():
        ops = entry["ops"]
        floor = ops["floor"]["median"]
        row = {
            "plan/floor": ops["plan"]["median"] / floor,
            "plan_for/floor": ops["plan"]["phases"]["plan_for"] / floor,
            "plan10/floor": ops["plan10"]["median"] / floor,
        }
        if n in estimates:
            row["ansible/cli_plan"] = estimates[n]["seconds"] / ops["cli_plan"]["median"]
            row["ansible/plan"] = estimates[n]["seconds"] / ops["plan"]["median"]
            row["ansible_measured"] = estimates[n]["measured"]
        per_size[n] = row
    scaling = {}
    if 1000 in sizes and 5000 in sizes:
        for op in OPS:
            scaling[op] = _median(sizes, 5000, op) / _median(sizes, 1000, op)  # type: ignore[operator]
        # The phases of the 10%-changed plan: a no-change plan compiles nothing (load is 0).
        for phase in ("load", "plan_for"):
            scaling[f"plan10:{phase}"] = (
                sizes[5000]["ops"]["plan10"]["phases"][phase]
                / sizes[1000]["ops"]["plan10"]["phases"][phase]
            )
    return {"per_size": per_size, "scaling_5000_1000": scaling, "ansible": estimates}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    sizes, derived = results["sizes"], results["ratios"]
    out = []
    if 1000 in sizes:
        value = derived["per_size"][1000]["plan/floor"]
        out.append(
            {
                "target": f"plan (no change) at 1,000 apps <= {PLAN_FLOOR_MAX:g}x the I/O floor",
                "value": f"{value:.1f}x ({sizes[1000]['ops']['plan']['median']:.3f} s vs "
                f"{sizes[1000]['ops']['floor']['median']:.3f} s)",
                "met": value <= PLAN_FLOOR_MAX,
            }
        )
    measured = {
        n: derived["per_size"][n]["ansible/cli_plan"]
        for n in sizes
        if derived["ansible"].get(n, {}).get("measured")
    }
    if measured:
        worst = min(measured.values())
        shown = ", ".join(f"{v:.0f}x at {n:,} apps" for n, v in sorted(measured.items()))
        out.append(
            {
                "target": f">= {ANSIBLE_MIN:g}x faster than Ansible (CLI plan wall vs "
                "ansible-playbook --check --diff wall, measured sizes)",
                "value": shown,
                "met": worst >= ANSIBLE_MIN,
            }
        )
    scaling = derived["scaling_5000_1000"]
    if scaling:
        worst_op = max(("compile", "plan", "plan10", "apply"), key=lambda op: scaling[op])
        out.append(
            {
                "target": f"linear cost: time(5,000) / time(1,000) <= {LINEAR_MAX:g}",
                "value": ", ".join(
                    f"{op} {scaling[op]:.2f}" for op in ("compile", "plan", "plan10", "apply")
                ),
                "met": scaling[worst_op] <= LINEAR_MAX,
            }
        )
    version = results["version"]
    out.append(
        {
            "target": f"`fcgicompose --version` under {VERSION_MAX:g} s",
            "value": f"{version['median']:.3f} s (median of {len(version['runs'])})",
            "met": version["median"] < VERSION_MAX,
        }
    )
    return out


# ----------------------------------------------------------------------------- report


def _fmt_time(stats: dict[str, Any]) -> str:
    median = stats["median"]
    shown = f"{median:.4f}" if median < 0.01 else f"{median:.3f}"
    return f"{shown} ±{stats['spread'] * 50:.0f}%"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def report(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    lines = []
    cfg = results["config"]
    lines.append(
        f"fcgicompose benchmark: apps x {gen.WORKERS} workers, {results['machine']['cpus']} cores, "
        f"Python {results['machine']['python']}; medians in seconds, ± half the min-max range"
    )
    lines.append(f"command: {cfg['command']}")
    lines.append("")
    cols = [*OPS, "ansible"]
    header = f"{'apps':>5} {'files':>6} {'runs':>4} " + " ".join(
        f"{OP_TITLES[c]:>19}" for c in cols
    )
    lines += ["Time", header, "-" * len(header)]
    estimates = results["ratios"]["ansible"]
    for n, entry in sizes.items():
        cells = [f"{_fmt_time(entry['ops'][op]):>19}" for op in OPS]
        if n in estimates:
            est = estimates[n]
            text = f"{est['seconds']:.1f}" + ("" if est["measured"] else " (extrap.)")
        elif n in results["ansible"]:
            a = results["ansible"][n]
            text = f"{a['seconds']:.1f} ({a['items']} items)"
        else:
            text = "-"
        cells.append(f"{text:>19}")
        lines.append(f"{n:>5} {entry['artifacts']:>6} {entry['runs']:>4} " + " ".join(cells))
    lines.append("")

    lines.append("Phases (medians, s): plan = load (read+parse+validate spec) + plan_for")
    lines.append("(graph+render+read root+diff), shown for the 10%-changed plan (a no-change")
    lines.append("plan compiles nothing); apply = plan + apply_plan (write+fsync+record)")
    header = f"{'apps':>5} {'compile:load':>13} {'compile:graph':>14} {'plan10:load':>12} "
    header += f"{'plan10:plan_for':>16} {'apply:apply_plan':>17}"
    lines += [header, "-" * len(header)]
    for n, entry in sizes.items():
        ops = entry["ops"]
        lines.append(
            f"{n:>5} {ops['compile']['phases']['load']:>13.3f} "
            f"{ops['compile']['phases']['graph']:>14.3f} {ops['plan10']['phases']['load']:>12.3f} "
            f"{ops['plan10']['phases']['plan_for']:>16.3f} "
            f"{ops['apply']['phases']['apply_plan']:>17.3f}"
        )
    lines.append("")

    lines.append(
        "Peak memory, MiB (ru_maxrss of each run's process from wait4, median; "
        "'base' = the worker's RSS before the operation: interpreter + imports)"
    )
    header = f"{'apps':>5} {'base':>5} " + " ".join(f"{OP_TITLES[c]:>19}" for c in cols)
    lines += [header, "-" * len(header)]
    for n, entry in sizes.items():
        ops = entry["ops"]
        cells = [f"{_mib(ops[op]['maxrss_kib']):>19}" for op in OPS]
        a = results["ansible"].get(n)
        cells.append(f"{_mib(a['maxrss_kib']) if a else '-':>19}")
        base = _mib(ops["plan"].get("rss_before_kib", 0))
        lines.append(f"{n:>5} {base:>5} " + " ".join(cells))
    lines.append("")

    lines.append("Ratios")
    header = (
        f"{'apps':>5} {'plan/floor':>11} {'plan_for/floor':>15} {'plan10/floor':>13} "
        f"{'Ansible/CLI plan':>17} {'Ansible/plan':>13}"
    )
    lines += [header, "-" * len(header)]
    for n, row in results["ratios"]["per_size"].items():
        mark = "" if row.get("ansible_measured", True) else "*"
        ansible_cli = f"{row['ansible/cli_plan']:.0f}x{mark}" if "ansible/cli_plan" in row else "-"
        ansible_plan = f"{row['ansible/plan']:.0f}x{mark}" if "ansible/plan" in row else "-"
        lines.append(
            f"{n:>5} {row['plan/floor']:>10.1f}x {row['plan_for/floor']:>14.1f}x "
            f"{row['plan10/floor']:>12.1f}x {ansible_cli:>17} {ansible_plan:>13}"
        )
    if any(not row.get("ansible_measured", True) for row in results["ratios"]["per_size"].values()):
        lines.append(
            "  * Ansible extrapolated linearly over files+links from the measured runs "
            f"({', '.join(f'{n:,}' for n in results['ansible'])} apps), not measured"
        )
    scaling = results["ratios"]["scaling_5000_1000"]
    if scaling:
        lines.append(
            "time(5,000)/time(1,000): "
            + ", ".join(f"{OP_TITLES.get(k, k)} {v:.2f}" for k, v in scaling.items())
        )
    lines.append("")

    for name, a in results["ansible"].items():
        if a.get("sample"):
            lines.append(
                f"Ansible at {name} apps: equivalence check on a sample of {len(a['sample'])} "
                f"apps ({a['items']} items, {a['seconds']:.1f} s, {a['per_item'] * 1000:.0f} ms "
                f"per item): changed={a['changed']}"
            )
    if results["ansible"]:
        lines.append(
            f"Ansible: ansible-core {results.get('ansible_version', '?')}, connection: local, "
            "--check --diff, changed=0 on every run means its templates render what "
            "fcgicompose writes."
        )
    elif results.get("ansible_skipped"):
        lines.append(f"Ansible: skipped ({results['ansible_skipped']})")
    lines.append("")

    lines.append("Targets")
    for t in results["targets"]:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")
    lines.append("")

    for kind in ("plan", "apply"):
        prof = results.get("profile", {}).get(kind)
        if not prof:
            continue
        total = prof["profiled_total"]
        lines.append(
            f"cProfile of {kind} at {results['profile']['apps']:,} apps "
            f"({prof['seconds']:.2f} s under the profiler), top functions by own time:"
        )
        for row in prof["by_tottime"][:15]:
            lines.append(
                f"  {row['tottime'] / total:6.1%} own {row['cumtime'] / total:6.1%} cum "
                f"{row['calls']:>9} calls  {row['function']} ({row['where']})"
            )
        lines.append("  fcgicompose functions by cumulative time:")
        for row in prof["fcgicompose_by_cumtime"][:15]:
            lines.append(
                f"  {row['cumtime'] / total:6.1%} cum {row['calls']:>9} calls  "
                f"{row['function']} ({row['where']})"
            )
        lines.append("")

    problems = results["problems"]
    if problems:
        lines.append("PROBLEMS (the figures above are not trustworthy):")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append("Checks: every no-change plan reported no change; every 10%-changed plan")
        lines.append("reported changes for exactly the 10% of apps that changed; every apply")
        lines.append("wrote every file; the floor read every file.")
    lines.append(f"Elapsed: {results['elapsed']:.0f} s")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="fcgicompose benchmarks (docs/benchmarks.md)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="10 apps, 1 run each, Ansible only if installed"
    )
    parser.add_argument("--sizes", help="comma-separated app counts (default 10,100,1000,5000)")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 5; 3 at 5,000)")
    parser.add_argument(
        "--ansible",
        choices=("install", "auto", "skip"),
        help="install: create the Ansible venv if missing (default); auto: only if installed "
        "(default with --smoke); skip",
    )
    parser.add_argument(
        "--ansible-max",
        type=int,
        default=100,
        help="largest size Ansible is run for; larger ones are extrapolated (default 100: "
        "Ansible needs ~0.3 s per file here, ~1 h at 1,000 apps)",
    )
    parser.add_argument(
        "--profile-size", type=int, default=1000, help="size to cProfile (0: none; default 1000)"
    )
    parser.add_argument("--version-runs", type=int, help="runs of --version (default 10)")
    parser.add_argument("--work", type=Path, help="work directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="write results here (default bench/results/)")
    parser.add_argument("--quiet", action="store_true", help="no progress, no table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    started = time.perf_counter()
    log: Log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    if args.smoke:
        sizes = [10]
        default_runs, version_runs = 1, 3
        ansible_mode = args.ansible or "auto"
        profile_size = 0
    else:
        sizes = list(SIZES)
        default_runs, version_runs = 5, 10
        ansible_mode = args.ansible or "install"
        profile_size = args.profile_size
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    version_runs = args.version_runs or version_runs

    work = args.work or Path(tempfile.mkdtemp(prefix="fcgicompose-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            "sizes": sizes,
            "workers": gen.WORKERS,
            "ansible": ansible_mode,
            "ansible_max": args.ansible_max,
        },
        "sizes": {},
        "ansible": {},
        "problems": [],
    }
    if ansible_mode == "install":
        have_ansible = ansible_side.install(log)
    else:
        have_ansible = ansible_mode == "auto" and ansible_side.installed()
    if have_ansible:
        results["ansible_version"] = ansible_side.version()
    else:
        results["ansible_skipped"] = (
            "--ansible skip" if ansible_mode == "skip" else "ansible-core not installed"
        )
    try:
        for n in sizes:
            runs = args.runs or (default_runs if n <= 1000 else min(default_runs, 3))
            entry, spec, root = bench_size(n, runs, work, log)
            results["sizes"][n] = entry
            results["problems"] += [f"{n} apps: {p}" for p in entry["problems"]]
            if have_ansible and (args.smoke or n <= args.ansible_max):
                sample = SMOKE_ANSIBLE_SAMPLE if args.smoke else None
                a = bench_ansible(n, spec, root, work, log, sample)
                results["ansible"][n] = a
                results["problems"] += [f"{n} apps, Ansible: {p}" for p in a["problems"]]
            if n == profile_size:
                results["profile"] = bench_profile(n, spec, root, work, log)
            if not args.keep:
                shutil.rmtree(work / f"{n}" / "root", ignore_errors=True)
        log("fcgicompose --version")
        results["version"] = measure_version(version_runs)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["ratios"] = ratios(results)
    results["targets"] = targets(results)
    results["elapsed"] = time.perf_counter() - started
    text = report(results)
    json_path = args.json or RESULTS_DIR / ("smoke.json" if args.smoke else "latest.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    json_path.with_suffix(".txt").write_text(text)
    if not args.quiet:
        print(text, end="")
        print(f"(results: {json_path} and {json_path.with_suffix('.txt')})", file=sys.stderr)
    return results
