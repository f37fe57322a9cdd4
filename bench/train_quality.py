"""Modular vs joint training: distance to the exact causal answer against wall time and steps.

For each built-in example (or a study folder with ``--study DIR``) this trains the modular plan
and the joint (NCM-style) baseline plan through the same trainer, and records at every fit check
the TVD between the model's P(outcome | do(treatment = x)) and the exact answer (max over x),
with the time spent evaluating excluded from the wall time. It prints one table and writes the
curves to ``bench/out/train_quality_<time>.json``.

Targets (design.md §7 / the engine brief): the modular plan reaches the joint plan's final TVD in
at most half the joint plan's time; CPU-size studies reach their quality bar within 3 minutes.

    python bench/train_quality.py                        # all examples, default budgets
    python bench/train_quality.py --examples xray --budget 120
    python bench/train_quality.py --examples colored_digits --image-net mlp   # pixel WGAN-GP
    python bench/train_quality.py --study path/to/study --treatment C --outcome N
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdcm.examples import load_example  # noqa: E402
from mdcm.model import DCM, ModelConfig  # noqa: E402
from mdcm.plan import joint_plan, make_plan  # noqa: E402
from mdcm.query import effect_table, fit_image_probe, sample, tvd  # noqa: E402
from mdcm.train import Event, TrainConfig, train  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BAR = 0.05  # quality bar: max_x TVD(P(Y | do(X=x)), truth)


def _given_cells(model: DCM, ex) -> list[dict]:
    """Every value combination of the example's query evidence (``[{}]`` without evidence)."""
    cells = [{}]
    for g in ex.given:
        cells = [dict(c, **{g: v}) for c in cells for v in range(model.schema[g].classes)]
    return cells


def do_error(model: DCM, ex, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """(model error, naive error) of the example's query P(Y | do(X=x)[, given]) against the
    exact truth, worst case over x (and the evidence's values): TVD for a categorical outcome,
    |mean error| / SD(Y | do(x)) for a continuous one."""
    k = model.schema[ex.treatment].classes
    kind = model.schema[ex.outcome].kind
    errs, naive = [], []
    for x in range(k):
        for g in _given_cells(model, ex):
            s = sample(model, n, {ex.treatment: x}, given=g, seed=seed + x)
            y = s[ex.outcome].cpu().numpy()
            if kind == "continuous":
                mean, sd = ex.truth_mean(ex.outcome, {ex.treatment: x})
                errs.append(abs(y.mean() - mean) / sd)
                naive.append(abs(ex.naive_mean(ex.outcome, {ex.treatment: x})[0] - mean) / sd)
                continue
            truth = ex.truth(ex.outcome, {ex.treatment: x}, g)
            p = np.bincount(y, minlength=len(truth)) / len(y)
            errs.append(tvd(p, truth))
            naive.append(tvd(ex.naive(ex.outcome, {ex.treatment: x, **g}), truth))
    return max(errs), max(naive)


def image_error(model: DCM, ex, probes: dict, n: int = 2000) -> float | None:
    """Max over x, image variables and their hidden features of |P_model(feature | do(x)) -
    truth| (TVD), the features read by a probe trained on the example's own real images."""
    if not probes:
        return None
    worst = 0.0
    for x in range(model.schema[ex.treatment].classes):
        s = model.sample(n, {ex.treatment: x}, seed=100 + x)
        for img, probe in probes.items():
            freq = probe.frequencies(s[img], ex.feature_classes)
            for f in ex.feature_names[img]:
                worst = max(worst, tvd(freq[f], ex.truth(f, {ex.treatment: x})))
    return worst


def image_probes(ex, seed: int) -> dict:
    """One feature probe per image variable, fitted on fresh real images of the example."""
    probes = {}
    cols, hid = ex.sample(5000, seed=seed + 11)
    for img in (v.name for v in ex.schema.variables if v.kind == "image"):
        probes[img], acc = fit_image_probe(
            cols[img], {f: hid[f] for f in ex.feature_names[img]}, ex.feature_classes, seed=seed
        )
        print(f"  {img}: probe accuracy on held-out real images: {acc}", flush=True)
    return probes


def run_plan(
    ex, plan, cfg: TrainConfig, mcfg: ModelConfig, eval_every_check: bool = True, probe=None
) -> dict:
    torch.manual_seed(cfg.seed)
    model = DCM(ex.study.schema, mcfg)
    curve: list[dict] = []
    eval_time = [0.0]
    last_stage = plan.stages[-1].id
    t0 = time.monotonic()

    def on_event(e: Event) -> None:
        if e.kind in ("check", "stage_end") and e.stage == last_stage and eval_every_check:
            t = time.monotonic()
            err, _ = do_error(model, ex, n=2000)
            eval_time[0] += time.monotonic() - t
            curve.append(
                {
                    "t": time.monotonic() - t0 - eval_time[0],
                    "kind": e.kind,
                    "stage": e.stage,
                    "step": e.step,
                    "fit": e.quality,
                    "tvd": err,
                }
            )

    res = train(model, plan, ex.study, cfg, on_event=on_event)
    wall = time.monotonic() - t0 - eval_time[0]
    err, naive = do_error(model, ex)
    t = time.monotonic()
    s = model.sample(4000, {ex.treatment: 0}, seed=1)
    sps = 4000 / (time.monotonic() - t)
    assert s
    return {
        "wall_s": wall,
        "steps": sum(st.steps for st in res.stages),
        "tvd": err,
        "naive_tvd": naive,
        "samples_per_s": sps,
        "curve": curve,
        "stages": [st.to_json() for st in res.stages],
        "image_err": image_error(model, ex, probe or {}),
    }


def time_to_reach(curve: list[dict], level: float) -> float | None:
    for c in curve:
        if c["tvd"] <= level:
            return c["t"]
    return None


def bench_example(name: str, budget: float, seed: int, image_net: str = "auto") -> dict:
    ex = load_example(name, size="cpu", seed=seed)
    probe = image_probes(ex, seed)
    mcfg = ModelConfig(image_net=image_net)
    modular = make_plan(ex.study.graph, ex.study.interventions)
    joint = joint_plan(ex.study.graph, ex.study.interventions)
    n_st = len(modular.stages)
    base = dict(seed=seed, check_every=100, tolerance=0.02, stable_checks=3)
    # Budget: the joint stage gets `budget` seconds; modular stages share the same total.
    cfg_mod = TrainConfig(steps=100_000, time_limit_s=budget / n_st, **base)
    cfg_joint = TrainConfig(steps=100_000, time_limit_s=budget, **base)
    out = {"example": name, "budget_s": budget, "stages": n_st, "image_net": image_net}
    print(f"[{name}] modular plan ({n_st} stages)", flush=True)
    out["modular"] = run_plan(ex, modular, cfg_mod, mcfg, probe=probe)
    print(f"[{name}] joint plan", flush=True)
    out["joint"] = run_plan(ex, joint, cfg_joint, mcfg, probe=probe)
    jt = out["joint"]["tvd"]
    reach = time_to_reach(out["modular"]["curve"], jt)
    out["modular_time_to_joint_final"] = reach
    out["ratio_to_joint_time"] = None if reach is None else reach / out["joint"]["wall_s"]
    out["modular_time_to_bar"] = time_to_reach(out["modular"]["curve"], BAR)
    return out


def bench_study(
    path: Path, treatment: str | None, outcome: str | None, budget: float, seed: int
) -> dict:
    from mdcm.data import load_study

    study = load_study(path)
    out: dict = {"study": str(path), "budget_s": budget}
    for label, plan in (
        ("modular", make_plan(study.graph, study.interventions)),
        ("joint", joint_plan(study.graph, study.interventions)),
    ):
        torch.manual_seed(seed)
        model = DCM(study.schema, ModelConfig())
        cfg = TrainConfig(
            steps=100_000, time_limit_s=budget / len(plan.stages), seed=seed, check_every=100
        )
        t0 = time.monotonic()
        res = train(model, plan, study, cfg)
        row = {"wall_s": time.monotonic() - t0, "stages": [s.to_json() for s in res.stages]}
        if treatment and outcome:
            eff = effect_table(model, study, treatment, outcome, n=4000, seed=seed)
            row["effect"] = eff.to_json()
        out[label] = row
        print(json.dumps({label: row}, indent=1, default=str), flush=True)
    return out


def bench_defaults(
    name: str,
    seeds: list[int],
    image_net: str = "auto",
    randomise: list[str] = (),
    plans: tuple[str, ...] = ("modular", "joint"),
    overrides: dict | None = None,
) -> list[dict]:
    """Default training (``TrainConfig()`` with only the seed set: 3000 steps per stage, early
    stop on the fit check), modular and joint plan, one row per seed. ``randomise`` adds one
    experimental dataset (as many rows as the observational one) in which those variables were
    randomised row by row."""
    rows = []
    for seed in seeds:
        exps = [{v: None for v in randomise}] if randomise else ()
        ex = load_example(name, size="cpu", seed=seed, interventions=exps)
        probes = image_probes(ex, seed)
        for label, plan in (
            ("modular", make_plan(ex.study.graph, ex.study.interventions)),
            ("joint", joint_plan(ex.study.graph, ex.study.interventions)),
        ):
            if label not in plans:
                continue
            print(f"[{name}] seed {seed}, {label} plan, default training", flush=True)
            r = run_plan(
                ex,
                plan,
                dataclasses.replace(TrainConfig(seed=seed), **(overrides or {})),
                ModelConfig(image_net=image_net),
                eval_every_check=False,
                probe=probes,
            )
            r.update(example=name, seed=seed, plan=label, curve=[], randomised=list(randomise))
            rows.append(r)
            print(
                f"  {r['wall_s']:.1f} s, error {r['tvd']:.3f} (naive {r['naive_tvd']:.3f}), "
                f"img err {r['image_err']}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--examples",
        nargs="*",
        default=[
            "bow",
            "napkin",
            "backdoor",
            "xray",
            "colored_digits",
            "frontdoor_continuous",
            "experiment",
            "two_images",
        ],
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the joint plan (modular stages share the same total); "
        "default 60 for label-only examples, 240 for image examples",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--image-net",
        default="auto",
        choices=("auto", "latent", "mlp", "conv"),
        help="image mechanisms (ModelConfig.image_net): compare latent with pixel",
    )
    ap.add_argument("--study", type=Path, default=None)
    ap.add_argument("--treatment")
    ap.add_argument("--outcome")
    ap.add_argument(
        "--defaults",
        action="store_true",
        help="train with the library defaults (TrainConfig()) instead of a time budget, for "
        "every seed of --seeds, modular and joint; prints one row per seed",
    )
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument(
        "--randomise",
        nargs="*",
        default=[],
        help="with --defaults: add an experiment in which these variables were randomised",
    )
    ap.add_argument(
        "--plans", nargs="*", default=["modular", "joint"], choices=("modular", "joint")
    )
    ap.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="with --defaults: a TrainConfig field"
    )
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, _, v in (p.partition("=") for p in args.set or ())}
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.study is not None:
        res = bench_study(args.study, args.treatment, args.outcome, args.budget or 240, args.seed)
        (OUT / f"train_quality_study_{stamp}.json").write_text(
            json.dumps(res, indent=1, default=str)
        )
        return
    if args.defaults:
        rows = []
        for name in args.examples:
            rows += bench_defaults(
                name, args.seeds, args.image_net, args.randomise, tuple(args.plans), overrides
            )
            (OUT / f"train_quality_defaults_{stamp}.json").write_text(
                json.dumps(rows, indent=1, default=str)
            )
        print(
            f"\n{'example':21} {'plan':8} {'seed':>4} {'wall s':>7} {'steps':>6} "
            f"{'error':>6} {'naive':>6} {'img err':>7}"
        )
        for r in rows:
            ie = "" if r["image_err"] is None else f"{r['image_err']:.3f}"
            print(
                f"{r['example']:21} {r['plan']:8} {r['seed']:4d} {r['wall_s']:7.1f} "
                f"{r['steps']:6d} {r['tvd']:6.3f} {r['naive_tvd']:6.3f} {ie:>7}"
            )
        print(
            "\nerror: worst case over treatment (and evidence) values of TVD to the exact "
            "P(Y | do(X=x)[, given]); continuous outcomes: |mean error| / SD(Y | do(x))."
        )
        return
    results = []
    for name in args.examples:
        has_image = any(v.kind == "image" for v in load_example(name, n=10).schema.variables)
        budget = args.budget or (240.0 if has_image else 60.0)
        results.append(bench_example(name, budget, args.seed, args.image_net))
        (OUT / f"train_quality_{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    hdr = (
        f"{'example':15} {'plan':8} {'wall s':>7} {'steps':>6} {'TVD':>6} {'naive':>6} "
        f"{'img err':>7} {'t(TVD<=joint)':>13} {'t(TVD<=.05)':>11} {'samples/s':>10}"
    )
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in results:
        for label in ("modular", "joint"):
            x = r[label]
            reach = r["modular_time_to_joint_final"] if label == "modular" else x["wall_s"]
            bar = time_to_reach(x["curve"], BAR)
            ie = "" if x["image_err"] is None else f"{x['image_err']:.3f}"
            print(
                f"{r['example']:15} {label:8} {x['wall_s']:7.1f} {x['steps']:6d} "
                f"{x['tvd']:6.3f} {x['naive_tvd']:6.3f} {ie:>7} "
                f"{'' if reach is None else f'{reach:.1f}':>13} "
                f"{'' if bar is None else f'{bar:.1f}':>11} {x['samples_per_s']:10.0f}"
            )
    print(
        "\nTVD: max over treatment values of TVD(model P(Y | do(X=x)), exact); naive: the same "
        "for P(Y | X=x); img err: max TVD of probe-read image features vs exact; t(...): "
        "seconds until the curve (raw weights, last stage) first reached that level. "
        "One-stage examples (bow: not identifiable) train the same plan twice."
    )
    print(f"written {OUT / f'train_quality_{stamp}.json'}")


if __name__ == "__main__":
    main()
