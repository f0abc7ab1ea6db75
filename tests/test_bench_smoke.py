"""The benchmark (bench/, `make bench`) at 10 apps, 1 run each, so it cannot rot unnoticed.

Runs the same driver as `python -m bench --smoke` (worker processes, checks, tables) without
Ansible, and asserts the figures are sane. A second test renders a sample with the Ansible
templates and checks they still produce exactly what fcgicompose writes; it runs only when the
benchmark's separate Ansible venv is already installed (bench/.venv-ansible, made by
`make bench`), and is skipped otherwise: tests never install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import gen
from bench.run import OPS, main, report


def _smoke(tmp_path: Path, *extra: str) -> dict[str, Any]:
    return main(
        [
            "--smoke",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(tmp_path / "smoke.json"),
            "--quiet",
            *extra,
        ]
    )


def test_smoke_run_gives_sane_numbers(tmp_path: Path) -> None:
    results = _smoke(tmp_path, "--ansible", "skip")

    assert results["problems"] == []
    entry = results["sizes"][10]
    assert entry["apps"] == 10
    # 10 apps x (socket + service + 8 links) + 9 routed upstreams + 4 server blocks.
    assert entry["artifacts"] == 10 * (2 + gen.WORKERS) + 9 + 4
    for op in OPS:
        stats = entry["ops"][op]
        assert len(stats["runs"]) == 1, op
        assert all(t > 0 for t in stats["runs"]), op
        assert stats["min"] <= stats["median"] <= stats["max"], op
        assert stats["maxrss_kib"] > 1024, op  # at least an interpreter's worth
    # The no-change plan really reports no change ...
    assert entry["plan_changes"] == 0
    # ... and the 10%-changed one exactly the changed apps (1 of 10): its service unit and,
    # being routed or not, its upstream.
    assert entry["plan10_changed_apps"] == len(gen.changed_apps(10)) == 1
    assert entry["plan10_changed_files"] in (1, 2)
    # Phases add up to no more than the whole.
    plan = entry["ops"]["plan"]
    assert 0 < plan["phases"]["load"] + plan["phases"]["plan_for"] <= plan["median"] * 1.01
    assert results["version"]["median"] > 0
    assert results["ratios"]["per_size"][10]["plan/floor"] > 0
    assert any("--version" in t["target"] for t in results["targets"])
    assert "Targets" in report(results)
    assert (tmp_path / "smoke.json").exists() and (tmp_path / "smoke.txt").exists()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").glob("*/root"))


def test_changed_variant_changes_exactly_ten_percent() -> None:
    for n in (10, 100, 1000):
        changed = gen.changed_apps(n)
        assert len(changed) == n // 10 == len(set(changed))
        same, variant = gen.spec_text(n), gen.spec_text(n, changed)
        assert same != variant and same == gen.spec_text(n)
