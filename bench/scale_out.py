"""Scale-out benchmark (issue 13): wall time of training with 1 vs 2 Ray workers, and the ideal
speed-up of the plans of the paper's random graphs.

Part 1 — two label studies with many independent stages, each trained with the same seeds on 1
and then on 2 local Ray workers (``mdcm.scheduler.train_parallel``):

* an 8-node study with one confounded pair (random binary SCM on ``random_graph(8, 10, 1)``);
* a random 30-node graph at the paper's density (N²/5 directed edges, N/3 confounded pairs).

Per-stage times are read from the 1-worker run (from the driver's ``submit`` event to the
stage's end reaching the driver: everything a stage costs, task overhead included). The ideal
schedule packs those times on 2 workers along the plan's dependencies (critical-path list
scheduling, ``mdcm.scheduler.list_schedule``); the lower bound is max(critical path, total/2).
The wall time runs from the first stage's submission to the last stage's end, with a warm Ray
instance (its start and the workers' first torch import are printed apart). Answers:
P(outcome | do(treatment = x)) from 40,000 samples of each model (max over x of the TVD between
the 1- and 2-worker models, and to the truth: exact for 8 nodes, Monte-Carlo with 400,000 SCM
draws for 30).

Part 2 — for N = 15 … 50 (the paper's scalability graphs, one per N, seed 1000·N): each plan is
trained once in one process with few steps; from the measured seconds per stage it prints the
total stage work, the critical path, the ideal speed-up (total / critical path) and the
list-schedule speed-up on 2, 4 and 8 workers: what a cluster would give.

    nice -n 10 python bench/scale_out.py                 # both parts
    nice -n 10 python bench/scale_out.py --part 1 --steps 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdcm.examples._scm import SCM, Node, make_example, sigmoid  # noqa: E402
from mdcm.graph import CausalGraph, random_graph  # noqa: E402
from mdcm.model import DCM, ModelConfig  # noqa: E402
from mdcm.plan import make_plan  # noqa: E402
from mdcm.query import tvd  # noqa: E402
from mdcm.scheduler import connect, critical_path, list_schedule, train_parallel  # noqa: E402
from mdcm.train import TrainConfig, train  # noqa: E402
from mdcm.variables import Schema, Variable  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


# ---------------------------------------------------------------------- studies
def random_scm_example(graph: CausalGraph, n: int, seed: int, name: str):
    """A binary SCM on ``graph`` (one latent binary U per bidirected edge, logistic mechanisms
    with random weights) as an Example with exact truth; the outcome is the last variable in
    causal order that has a parent, the treatment its first parent."""
    rng = np.random.default_rng(seed)
    order = graph.order(graph.nodes)
    topo = _topological(graph)
    latents = {}
    nodes = []
    for i, (a, b) in enumerate(sorted(graph.bidirected)):
        u = f"U{i}"
        latents.setdefault(a, []).append(u)
        latents.setdefault(b, []).append(u)
        nodes.append(
            Node(u, (), lambda p=rng.uniform(0.3, 0.7): np.array([[1 - p, p]]), 2, "latent")
        )
    for v in topo:
        parents = tuple(p for p in order if (p, v) in graph.directed) + tuple(latents.get(v, ()))
        w = rng.normal(0, 2.0 / np.sqrt(max(1, len(parents))), len(parents))
        b0 = rng.normal(0, 0.5)

        def cpt(*xs, w=w, b0=b0):
            z = b0 + sum(wi * (2 * np.asarray(x) - 1) for wi, x in zip(w, xs, strict=True))
            p1 = sigmoid(z)
            return np.stack([1 - p1, p1], axis=-1).reshape(-1, 2)

        nodes.append(Node(v, parents, cpt, 2))
    schema = Schema(graph, tuple(Variable(v, "categorical", classes=2) for v in graph.nodes))
    y = [v for v in topo if any((p, v) in graph.directed for p in order)][-1]
    x = next(p for p in order if (p, y) in graph.directed)
    return make_example(
        name, schema, SCM(tuple(nodes)), treatment=x, outcome=y, description=name, n=n, seed=seed
    )


def _topological(graph: CausalGraph) -> list[str]:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(graph.nodes)
    g.add_edges_from(graph.directed)
    pos = {v: i for i, v in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(g, key=pos.get))


def answers(model: DCM, ex, n: int = 40_000) -> np.ndarray:
    out = []
    for x in (0, 1):
        s = model.sample(n, {ex.treatment: x}, seed=100 + x)
        out.append(np.bincount(s[ex.outcome].cpu().numpy(), minlength=2) / n)
    return np.array(out)


def truth(ex, exact: bool) -> np.ndarray:
    if exact:
        return np.array([ex.truth(ex.outcome, {ex.treatment: x}) for x in (0, 1)])
    out = []
    for x in (0, 1):
        vals = ex.scm.sample(400_000, {ex.treatment: x}, np.random.default_rng(7 + x))
        out.append(np.bincount(vals[ex.outcome], minlength=2) / 400_000)
    return np.array(out)


MODEL = ModelConfig(hidden=64)


def config(steps: int) -> TrainConfig:
    # fixed work per stage (no early stop), so the 1- and 2-worker runs do the same work
    return TrainConfig(
        steps=steps, tolerance=0.0, patience=0, check_every=50, check_samples=2048, device="cpu"
    )


# ---------------------------------------------------------------------- part 1
def timed_run(ex, plan, cfg: TrainConfig, workers: int) -> dict:
    t0 = time.monotonic()
    with connect(workers=workers) as info:
        t_ray = time.monotonic() - t0
        warm = make_example_small()
        train_parallel(_fresh(warm), make_plan(warm.study.graph), warm.study, config(2))
        t_warm = time.monotonic() - t0 - t_ray
        events: list[dict] = []
        model = _fresh(ex)
        train_parallel(model, plan, ex.study, cfg, events.append)
    submit = {e["stage"]: e["elapsed_s"] for e in events if e["kind"] == "submit"}
    done = {e["stage"]: e["elapsed_s"] for e in events if e["kind"] == "stage_end"}
    starts = sorted(submit.values())
    return {
        "workers": workers,
        "cluster": info.describe(),
        "ray_start_s": t_ray,
        "warm_s": t_warm,
        "wall_s": max(done.values()) - starts[0],
        "per_stage_s": {s: done[s] - submit[s] for s in done},
        "model": model,
    }


def make_example_small():
    return random_scm_example(CausalGraph.parse("A -> B; C"), 200, 1, "warm")


def _fresh(ex) -> DCM:
    torch.manual_seed(0)
    return DCM(ex.study.schema, MODEL)


def part1(steps: int, n: int, only: str | None = None) -> list[dict]:
    studies = [
        ("8 nodes, 1 confounded pair", random_graph(8, 10, 1, seed=8), True),
        ("30 nodes, paper density", random_graph(30, 30 * 30 // 5, 10, seed=30_000), False),
    ]
    studies = [s for s in studies if only is None or s[0].startswith(only + " ")]
    rows = []
    print(f"Part 1: 1 vs 2 local Ray workers, {steps} steps per stage, {n} rows")
    head = (
        "study                        stages levels  1-worker s  2-worker s  ideal(2) s  "
        "bound s  2w/ideal  speed-up  |1w-2w|  TVD to truth"
    )
    print(head)
    for label, graph, exact in studies:
        ex = random_scm_example(graph, n, seed=len(graph.nodes), name=label)
        plan = make_plan(ex.study.graph)
        cfg = config(steps)
        one = timed_run(ex, plan, cfg, 1)
        two = timed_run(ex, plan, cfg, 2)
        dur = {int(k): v for k, v in one["per_stage_s"].items()}
        dur2 = {int(k): v for k, v in two["per_stage_s"].items()}
        ideal = list_schedule(plan, dur, 2)
        # contention: the same stages' times when two train at once on the 2 cores, and how
        # close the 2-worker run came to packing ITS OWN stage times (scheduling overhead alone)
        busy = sum(dur2.values()) / sum(dur.values())
        own = two["wall_s"] / list_schedule(plan, dur2, 2)
        bound = max(critical_path(plan, dur), sum(dur.values()) / 2)
        a1, a2 = answers(one["model"], ex), answers(two["model"], ex)
        t = truth(ex, exact)
        same = max(tvd(a1[x], a2[x]) for x in (0, 1))
        err = max(tvd(a2[x], t[x]) for x in (0, 1))
        weights_equal = all(
            torch.equal(p, q)
            for p, q in zip(
                one["model"].state_dict().values(), two["model"].state_dict().values(), strict=True
            )
        )
        row = {
            "study": label,
            "stages": len(plan.stages),
            "levels": len(plan.levels()),
            "one_s": one["wall_s"],
            "two_s": two["wall_s"],
            "ideal_s": ideal,
            "bound_s": bound,
            "ratio": two["wall_s"] / ideal,
            "speedup": one["wall_s"] / two["wall_s"],
            "answer_diff": same,
            "truth_tvd": err,
            "weights_equal": weights_equal,
            "ray_start_s": [one["ray_start_s"], two["ray_start_s"]],
            "warm_s": [one["warm_s"], two["warm_s"]],
            "per_stage_s": dur,
            "per_stage_2w_s": dur2,
            "busy_2w_over_1w": busy,
            "wall_2w_over_own_ideal": own,
        }
        rows.append(row)
        print(
            f"{label:<29}{row['stages']:>6}{row['levels']:>7}{row['one_s']:>12.1f}"
            f"{row['two_s']:>12.1f}{ideal:>12.1f}{bound:>9.1f}{row['ratio']:>10.3f}"
            f"{row['speedup']:>10.2f}{same:>9.4f}{err:>14.3f}"
            + ("" if weights_equal else "  (weights differ!)")
        )
        print(
            f"    stage times with 2 at once / alone: {busy:.2f}; 2-worker wall / packing of its "
            f"own stage times: {own:.3f}"
        )
        print(
            f"    Ray start {one['ray_start_s']:.1f}/{two['ray_start_s']:.1f} s, warm-up "
            f"{one['warm_s']:.1f}/{two['warm_s']:.1f} s (1/2 workers, not in the wall times); "
            f"weights equal: {weights_equal}"
        )
    return rows


# ---------------------------------------------------------------------- part 2
def part2(steps: int, n: int) -> list[dict]:
    print()
    print(f"Part 2: ideal speed-up of the paper's random graphs (one per N, {steps} steps/stage)")
    print("N   stages levels  work s  critical s  ideal speed-up  2 workers  4 workers  8 workers")
    rows = []
    for size in (15, 20, 25, 30, 35, 40, 45, 50):
        pairs = size * (size - 1) // 2
        graph = random_graph(size, min(size * size // 5, pairs), size // 3, seed=1000 * size)
        ex = random_scm_example(graph, n, seed=size, name=f"N={size}")
        plan = make_plan(ex.study.graph)
        res = train(_fresh(ex), plan, ex.study, config(steps))
        dur = {s.stage: s.seconds for s in res.stages}
        total, cp = sum(dur.values()), critical_path(plan, dur)
        speed = {w: total / list_schedule(plan, dur, w) for w in (2, 4, 8)}
        rows.append(
            {"N": size, "stages": len(plan.stages), "levels": len(plan.levels()), "work_s": total}
            | {"critical_s": cp, "ideal": total / cp, "list": speed}
        )
        print(
            f"{size:<4}{len(plan.stages):>6}{len(plan.levels()):>7}{total:>8.1f}{cp:>12.1f}"
            f"{total / cp:>16.2f}{speed[2]:>11.2f}{speed[4]:>11.2f}{speed[8]:>11.2f}"
        )
    print(
        f"mean ideal speed-up {statistics.mean(r['ideal'] for r in rows):.2f} "
        "(no number of workers beats it: the critical path bounds the wall time)"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", type=int, choices=(1, 2), action="append")
    ap.add_argument("--steps", type=int, default=300, help="steps per stage in part 1")
    ap.add_argument("--small-steps", type=int, default=40, help="steps per stage in part 2")
    ap.add_argument("--n", type=int, default=4000, help="rows per study")
    ap.add_argument("--only", choices=("8", "30"), help="part 1: one of the two studies")
    args = ap.parse_args()
    parts = args.part or [1, 2]
    torch.set_num_threads(1)
    out: dict = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]}
    with open("/proc/loadavg") as f:
        out["load_before"] = f.read().split()[:3]
    if 1 in parts:
        out["part1"] = part1(args.steps, args.n, args.only)
    if 2 in parts:
        out["part2"] = part2(args.small_steps, args.n)
    with open("/proc/loadavg") as f:
        out["load_after"] = f.read().split()[:3]
    print(f"machine load (1/5/15 min) before {out['load_before']}, after {out['load_after']}")
    OUT.mkdir(exist_ok=True)
    path = OUT / f"scale_out_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
