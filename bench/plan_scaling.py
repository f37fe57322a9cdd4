"""Planner scalability benchmark (Rahman & Kocaoglu 2024, the scalability study of Modular-DCM).

Part 1: random ADMGs at the paper's density (about N²/5 directed edges, capped at the number of
pairs, and N/3 confounded pairs; 5 graphs per N, fixed seeds). Prints the mean size of the largest
stage (|H|), the mean largest |matches ∪ given| (what one critic sees), the joint baseline (N),
the paper's reported mean largest stage, how many plans pass the independent validity oracle
of ``tests/plan_oracle.py`` (R1 by d-separation, R2, R3, minimal A), how many plans merged a
dependency cycle, and the mean largest stage over 100 further graphs.

Part 2: planning time for sparse graphs of 100, 500 and 1,000 nodes (~2N directed, ~N/3
bidirected edges).

Part 3: regime coverage. On random graphs with one or two interventional datasets (1-3 intervened
variables each, with and without observational data), how many (regime, stage) pairs that a
regime can inform (the stage trains some mechanism the regime does not intervene on) get a target,
under this planner and under the old rule ("one target per regime in which none of the stage's
mechanisms is intervened on"; the planner of commit ``OLD_RULE_COMMIT``, loaded from git history).
Also: plans that leave such a pair out, the mean largest stage, and how many of this planner's
plans pass the oracle.

Run: ``python bench/plan_scaling.py``.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from plan_oracle import check_plan  # noqa: E402

from mdcm.graph import random_graph  # noqa: E402
from mdcm.plan import make_plan  # noqa: E402

PAPER = {15: 5.6, 20: 5.4, 25: 8.2, 30: 12.6, 35: 12.8, 40: 17.6, 45: 19.6, 50: 22.0}
GRAPHS_PER_N = 5
MORE_GRAPHS = 100  # a steadier mean of the largest stage (no oracle check: planning is cheap)
OLD_RULE_COMMIT = "68d8fba"  # the last planner with the old regime rule
COVERAGE_GRAPHS = 200  # per row of the coverage table


def scalability_table() -> None:
    print(
        "N   mean max|H|  mean max|A∪B|  joint  paper max|H|  valid  merged  plan ms"
        f"  max|H| ({MORE_GRAPHS} more)"
    )
    for n in PAPER:
        pairs = n * (n - 1) // 2
        largest, widest, ms, merged = [], [], [], 0
        valid = 0
        for k in range(GRAPHS_PER_N):
            g = random_graph(n, min(n * n // 5, pairs), n // 3, seed=1000 * n + k)
            t0 = time.perf_counter()
            plan = make_plan(g)
            ms.append(1000 * (time.perf_counter() - t0))
            largest.append(max(len(s.trains) for s in plan.stages))
            widest.append(
                max(len(t.matches) + len(t.given) for s in plan.stages for t in s.targets)
            )
            merged += any("merged" in r for s in plan.stages for r in s.technical)
            valid += not check_plan(plan)
        many = [
            max(
                len(s.trains)
                for s in make_plan(
                    random_graph(n, min(n * n // 5, pairs), n // 3, seed=7_000_000 + 1000 * n + k)
                ).stages
            )
            for k in range(MORE_GRAPHS)
        ]
        print(
            f"{n:<4}{statistics.mean(largest):>11.1f}{statistics.mean(widest):>15.1f}"
            f"{n:>7}{PAPER[n]:>14.1f}{valid:>5}/{GRAPHS_PER_N}{merged:>6}/{GRAPHS_PER_N}"
            f"{statistics.mean(ms):>9.1f}{statistics.mean(many):>12.1f}"
        )


def timing_table() -> None:
    print()
    print("sparse graphs (~2N directed, ~N/3 bidirected)")
    print("N      regimes  plan s  stages  max|H|  max|A∪B|  levels")
    for n in (100, 500, 1000):
        g = random_graph(n, 2 * n, n // 3, seed=n)
        for interventions in ([], [["V1"], ["V2", "V3"]]):
            t0 = time.perf_counter()
            plan = make_plan(g, interventions)
            dt = time.perf_counter() - t0
            wide = max(len(t.matches) + len(t.given) for s in plan.stages for t in s.targets)
            big = max(len(s.trains) for s in plan.stages)
            print(
                f"{n:<7}{len(plan.regimes):>7}{dt:>8.2f}{len(plan.stages):>8}{big:>8}"
                f"{wide:>10}{len(plan.levels()):>8}"
            )


def _old_planner() -> types.ModuleType | None:
    """mdcm/plan.py as of ``OLD_RULE_COMMIT`` (None when git history is not available)."""
    try:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLD_RULE_COMMIT}:mdcm/plan.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("mdcm._plan_old_rule")
    mod.__package__ = "mdcm"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"mdcm/plan.py@{OLD_RULE_COMMIT}", "exec"), mod.__dict__)
    return mod


def _coverage(plan) -> tuple[int, int]:
    """(pairs a regime can inform, pairs with a target) over the plan's own stages."""
    can = has = 0
    for s in plan.stages:
        with_target = {t.regime.do for t in s.targets}
        for r in plan.regimes:
            if set(s.trains) - r.do:
                can += 1
                has += r.do in with_target
    return can, has


def coverage_table() -> None:
    old = _old_planner()
    print()
    print(
        f"regime coverage: {COVERAGE_GRAPHS} random graphs per row, 1-2 interventional datasets "
        "(1-3 intervened variables each)"
    )
    print(
        "N   observational  planner  informable  with target  plans leaving one out"
        "  mean max|H|  valid"
    )
    rows = [(n, obs) for n in (8, 15, 30) for obs in (True, False)]
    for n, obs in rows:
        rng = random.Random(100 * n + obs)
        cases = []
        for k in range(COVERAGE_GRAPHS):
            pairs = n * (n - 1) // 2
            g = random_graph(n, min(n * n // 5, pairs), n // 3, seed=5_000_000 + 1000 * n + k)
            regimes = [rng.sample(g.nodes, rng.randint(1, 3)) for _ in range(rng.randint(1, 2))]
            cases.append((g, regimes))
        planners = [("new", make_plan)] + ([("old", old.make_plan)] if old else [])
        for name, plan_fn in planners:
            can = has = left = valid = 0
            largest = []
            for g, regimes in cases:
                plan = plan_fn(g, regimes, observational=obs)
                c, h = _coverage(plan)
                can, has, left = can + c, has + h, left + (h < c)
                largest.append(max(len(s.trains) for s in plan.stages))
                if name == "new":
                    valid += not check_plan(plan)
            checked = f"{valid:>5}/{len(cases)}" if name == "new" else "      -"
            print(
                f"{n:<4}{'yes' if obs else 'no':>13}{name:>9}{can:>12}{has:>8} ({has / can:4.0%})"
                f"{left:>12}/{len(cases)} ({left / len(cases):4.0%})"
                f"{statistics.mean(largest):>9.1f}{checked}"
            )
    if old is None:
        print(f"(old rule not shown: git history with commit {OLD_RULE_COMMIT} is not available)")


if __name__ == "__main__":
    scalability_table()
    timing_table()
    coverage_table()
