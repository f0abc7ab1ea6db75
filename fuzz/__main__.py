"""`python -m fuzz`: throw generated specs at fcgicompose and check everything it accepts.

Each spec (a mutated sample, a spec built from scratch, or mangled TOML text) must either be
refused with a SpecError whose problems are one line each, or be accepted; never a traceback.
Every accepted spec is rendered and
  - read back the way systemd and nginx read it (fuzz/meaning.py): every value as written,
    no line or directive added, nothing nginx would refuse or ignore across files;
  - verified with the real `systemd-analyze verify` and `nginx -t` (tests/validators.py),
    many specs per call: each spec's apps are renamed `fN-APP` and its ports moved to a range
    of its own so that specs in one batch cannot collide; nothing else changes.
Exit status 0 only when there are no tracebacks and no failures. Failing specs are written to
--failures DIR for reproduction (`fcgicompose validate DIR/N.toml`).
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs

from fcgicompose import names
from fcgicompose.errors import SpecError
from fcgicompose.graph import Artifact, build_graph, ordered
from fcgicompose.spec import Spec, parse_spec
from fuzz import generate, meaning
from tests import validators

# Paths the verify root needs for itself: a program stub may not take their place.
ROOT_SKELETON = ("/etc/systemd/system/x", "/etc/passwd", "/etc/group")


@dataclass
class AppUnits:
    """One app's unit files, for `systemd-analyze verify` (apps are verified independently)."""

    number: int  # of the spec
    files: dict[str, str]
    links: dict[str, str]
    units: list[str]
    program: str
    accounts: tuple[str, str, str]  # user, group, socket group


@dataclass
class NginxFiles:
    """One spec's nginx files, by base name."""

    number: int
    files: dict[str, str]


@dataclass
class Results:
    origins: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    accepted: int = 0
    tracebacks: list[tuple[int, str]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    verify_calls: int = 0
    verified_apps: int = 0
    verified_units: int = 0
    unverifiable: list[int] = field(default_factory=list)
    nginx_calls: int = 0
    nginx_specs: int = 0
    nginx_files: int = 0
    apps: int = 0
    workers: int = 0
    problems: Counter[str] = field(default_factory=Counter)


def isolate(spec: Spec, number: int, port_base: int) -> Spec:
    """Rename the apps fN-APP and move the ports to port_base + i: nothing else changes."""
    ports = sorted({p for app in spec.apps.values() if app.route for p in app.route.listen})
    moved = {port: port_base + i for i, port in enumerate(ports)}
    apps = {}
    for name, app in spec.apps.items():
        route = app.route
        if route is not None:
            route = attrs.evolve(route, listen=tuple(moved[p] for p in route.listen))
        apps[f"f{number}-{name}"] = attrs.evolve(app, name=f"f{number}-{name}", route=route)
    return attrs.evolve(spec, apps=apps)


def split(number: int, spec: Spec, artifacts: list[Artifact]) -> tuple[list[AppUnits], NginxFiles]:
    """What the validators get of one (isolated) spec."""
    apps = []
    for app in spec.apps.values():
        mine = [a for a in artifacts if a.apps == (app.name,) and a.kind.is_unit]
        apps.append(
            AppUnits(
                number,
                {a.path: a.content for a in mine if not a.is_link},
                {a.path: a.link_target for a in mine if a.is_link},
                [
                    unit
                    for worker in range(1, app.workers + 1)
                    for unit in (
                        names.socket_instance(app, worker),
                        names.service_instance(app, worker),
                    )
                ],
                app.command[0],
                (app.user, app.group, spec.nginx.socket_group),
            )
        )
    nginx = {a.path.rpartition("/")[2]: a.content for a in artifacts if a.kind.is_nginx}
    return apps, NginxFiles(number, nginx)


def _clash(path: str, other: str) -> bool:
    """Whether two program paths need the same name as both a file and a directory."""
    path, other = posixpath.normpath(path), posixpath.normpath(other)
    return path == other or other.startswith(path.rstrip("/") + "/") or path.startswith(other + "/")


def verify_batch(batch: Sequence[AppUnits], workdir: Path) -> validators.Outcome:
    accounts = [a.accounts for a in batch]
    root = validators.build_verify_root(
        workdir / "root",
        {path: text for a in batch for path, text in a.files.items()},
        {path: target for a in batch for path, target in a.links.items()},
        programs=sorted({a.program for a in batch}),
        users={user for user, _, _ in accounts},
        groups={g for _, group, socket_group in accounts for g in (group, socket_group) if g},
    )
    return validators.systemd_verify(root, [unit for a in batch for unit in a.units])


def nginx_batch(batch: Sequence[NginxFiles], workdir: Path) -> validators.Outcome:
    files = {name: text for spec in batch for name, text in spec.files.items()}
    return validators.nginx_test(workdir / "nginx", files)


def verify_batches(apps: list[AppUnits], size: int, results: Results) -> list[list[AppUnits]]:
    """Batches of at most `size` apps whose program stubs cannot collide."""
    batches: list[list[AppUnits]] = []
    current: list[AppUnits] = []
    programs: set[str] = set()
    for app in apps:
        if any(_clash(app.program, p) for p in ROOT_SKELETON):
            results.unverifiable.append(app.number)  # its stub would replace the root's files
            continue
        clash = any(p != app.program and _clash(app.program, p) for p in programs) or _clash(
            app.program, "/"
        )
        if current and (len(current) >= size or clash):
            batches.append(current)
            current, programs = [], set()
        current.append(app)
        programs.add(app.program)
    if current:
        batches.append(current)
    return batches


def run_validators(
    apps: list[AppUnits], sites: list[NginxFiles], size: int, jobs: int, results: Results
) -> None:
    """verify and nginx -t in batches; after a failing batch, each item alone finds the culprit."""

    def check(kind: str, batch: Sequence[Any]) -> list[tuple[int, str]]:
        validate = verify_batch if kind == "systemd-analyze verify" else nginx_batch

        def run(items: Sequence[Any], workdir: Path) -> validators.Outcome:
            try:
                return validate(items, workdir)
            except OSError as error:  # e.g. a program path that is also another's directory
                return validators.Outcome((), -1, str(error), (f"cannot lay out: {error}",))

        with tempfile.TemporaryDirectory(prefix="fcgicompose-fuzz-") as tmp:
            outcome = run(batch, Path(tmp) / "all")
            if outcome.ok:
                return []
            found = []
            for i, item in enumerate(batch):
                alone = run([item], Path(tmp) / str(i))
                if not alone.ok:
                    found.append((item.number, f"{kind} fails:\n{alone}"))
            return found or [(batch[0].number, f"{kind} fails for the batch only:\n{outcome}")]

    work: list[tuple[str, Sequence[Any]]] = [
        ("systemd-analyze verify", b) for b in verify_batches(apps, size * 3, results)
    ]
    nginx = [s for s in sites if s.files]
    work += [("nginx -t", nginx[i : i + size]) for i in range(0, len(nginx), size)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for (kind, batch), found in zip(work, pool.map(lambda w: check(*w), work), strict=True):
            if kind == "nginx -t":
                results.nginx_calls += 1
                results.nginx_specs += len(batch)
                results.nginx_files += sum(len(s.files) for s in batch)
            else:
                results.verify_calls += 1
                results.verified_apps += len(batch)
                results.verified_units += sum(len(a.units) for a in batch)
            results.failures += found
            print(
                f"  {kind}: {results.verified_apps} apps, {results.nginx_specs} specs' nginx files",
                file=sys.stderr,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="specs to generate")
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same specs)")
    parser.add_argument("--batch", type=int, default=200, help="accepted specs per validator call")
    parser.add_argument("--jobs", type=int, default=2, help="validator calls run in parallel")
    parser.add_argument(
        "--failures",
        type=Path,
        default=Path(tempfile.gettempdir()) / "fcgicompose-fuzz-failures",
        help="where failing specs are written",
    )
    parser.add_argument(
        "--no-validators", action="store_true", help="skip systemd-analyze verify and nginx -t"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    if not args.no_validators:
        missing = validators.missing_tools("systemd-analyze", "nginx", "unshare")
        if missing:
            print(f"validators not installed: {', '.join(missing)}", file=sys.stderr)
            return 2

    results = Results()
    texts = generate.spec_texts(args.count, args.seed)
    apps: list[AppUnits] = []
    sites: list[NginxFiles] = []
    next_port = 1024
    for number, (origin, text) in enumerate(texts):
        results.origins[origin] += 1
        try:
            spec = parse_spec(text, f"fuzz-{number}.toml")
        except SpecError as error:
            results.rejected += 1
            for problem in error.problems:
                results.problems[_problem_kind(problem.message)] += 1
                if "\n" in str(problem) or not problem.message:
                    results.failures.append((number, f"unclean problem: {str(problem)!r}"))
            continue
        except Exception:  # noqa: BLE001  (exactly what the fuzzer looks for)
            results.tracebacks.append((number, traceback.format_exc()))
            continue
        results.accepted += 1
        results.apps += len(spec.apps)
        results.workers += sum(app.workers for app in spec.apps.values())
        try:
            artifacts = list(ordered(build_graph(spec)))
            problems = meaning.check(spec, artifacts)
            isolated = isolate(spec, number, next_port)
            spec_apps, spec_nginx = split(number, isolated, list(ordered(build_graph(isolated))))
        except Exception:  # noqa: BLE001
            results.tracebacks.append((number, traceback.format_exc()))
            continue
        ports = {p for app in spec.apps.values() if app.route for p in app.route.listen}
        next_port = 1024 if next_port + len(ports) > 60000 else next_port + len(ports)
        if problems:
            results.failures.append((number, "meaning differs:\n" + "\n".join(problems)))
        apps += spec_apps
        sites.append(spec_nginx)
    print(
        f"generated {len(texts)} specs: {results.rejected} rejected, {results.accepted} accepted",
        file=sys.stderr,
    )

    if not args.no_validators:
        run_validators(apps, sites, args.batch, args.jobs, results)

    elapsed = time.monotonic() - started
    _write_failures(args.failures, texts, results)
    print(_report(args, results, elapsed, validated=not args.no_validators))
    return 1 if results.tracebacks or results.failures else 0


def _summary(report: str) -> str:
    """The telling line of a failure report: a traceback's last, a validator's first complaint."""
    lines = [line.strip() for line in report.strip().splitlines() if line.strip()]
    if "complaints:" in lines:
        return lines[lines.index("complaints:") + 1][:160]
    return (lines[-1] if lines[0].startswith("Traceback") else " ".join(lines[:2]))[:160]


def _problem_kind(message: str) -> str:
    """A problem message without its particular values, for the tally."""
    cut = min((message.find(c) for c in "'\"0123456789{/" if c in message), default=-1)
    kind = message[:cut] if cut > 0 else message
    return kind.strip().rstrip(":(").strip()[:60] or message[:60]


def _write_failures(directory: Path, texts: list[tuple[str, str]], results: Results) -> None:
    bad = results.tracebacks + results.failures
    if not bad:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for number, report in bad:
        (directory / f"{number}.toml").write_text(texts[number][1], encoding="utf-8")
        (directory / f"{number}.txt").write_text(report, encoding="utf-8")


def _report(args: Any, results: Results, elapsed: float, *, validated: bool) -> str:
    lines = [
        f"fcgicompose fuzz: {sum(results.origins.values())} specs, seed {args.seed}",
        "  from: " + ", ".join(f"{n} {origin}" for origin, n in sorted(results.origins.items())),
        f"  rejected cleanly (SpecError, one line per problem): {results.rejected}",
        f"  accepted: {results.accepted} ({results.apps} apps, {results.workers} workers)",
        f"  tracebacks (loading or rendering): {len(results.tracebacks)}",
        f"  meaning read back like systemd/nginx: {results.accepted} specs checked",
    ]
    if validated:
        lines += [
            f"  systemd-analyze verify: {results.verified_apps} apps of the accepted specs, "
            f"{results.verified_units} unit instances, {results.verify_calls} calls; "
            f"apps that cannot be verified: {len(results.unverifiable)}",
            f"  nginx -t: {results.nginx_specs} specs with nginx files, "
            f"{results.nginx_files} files, {results.nginx_calls} calls",
        ]
    else:
        lines.append("  validators: skipped (--no-validators)")
    lines.append(f"  failures: {len(results.failures)}")
    for number, report in (results.tracebacks + results.failures)[:10]:
        lines.append(f"    spec {number}: {_summary(report)}")
    if results.tracebacks or results.failures:
        lines.append(f"  failing specs and reports written to {args.failures}/")
    lines.append("  most frequent problems in the rejected specs (a spec may have several):")
    for kind, n in results.problems.most_common(12):
        lines.append(f"    {n:6d}  {kind}")
    lines.append(f"  wall time: {elapsed:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
