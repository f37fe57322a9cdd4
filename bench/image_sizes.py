"""Image built-ins along the size ladder: causal error, image features, fidelity, time, memory.

For each (example, size, seed) a fresh process (so peak memory is per run) builds the built-in
study at that size, trains it with default settings (``TrainConfig(seed=…)`` plus any
``--set``), and reports:

* ``tvd``: max over treatment values of TVD(model P(Y | do(X=x)), exact truth) (4,000 samples);
* ``img_err`` / ``img_err_real``: the largest TVD between the exact P(feature | do(x)) and the
  frequencies a probe (trained on real images with their HIDDEN features) reads off generated
  images / off fresh real images drawn under do(x): the issue-11 bar is img_err within 0.05 of
  img_err_real;
* the fidelity figures of :mod:`mdcm.fidelity` (probe agreement gap, Fréchet distance and
  sharpness, each with its real-vs-real floor);
* wall and CPU seconds of training, steps, steps/s, peak resident memory (and peak GPU memory).

    nice -n 10 python bench/image_sizes.py --examples xray colored_digits --sizes 64 --seeds 0 1 2
    python bench/image_sizes.py --memory            # 20,000 images at 128 px: peak RSS only
    python bench/image_sizes.py --examples xray --sizes 128 --device cuda   # (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

OUT = Path(__file__).resolve().parent / "out"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def feature_probes(ex, seed: int) -> dict:
    """One probe per image variable for its HIDDEN features (color/digit, opacity), trained on
    5,000 fresh real images pooled to mdcm.fidelity.PROBE_SIDE (fast at any size)."""
    from mdcm.fidelity import pooled
    from mdcm.query import fit_image_probe

    cols, hid = ex.sample(5000, seed=seed + 11)
    out = {}
    for img in (v.name for v in ex.schema.variables if v.kind == "image"):
        feats = {f: hid[f] for f in ex.feature_names[img]}
        out[img], acc = fit_image_probe(pooled(cols[img]), feats, ex.feature_classes, seed=seed)
        print(f"  {img}: feature probe accuracy on held-out real images {acc}", flush=True)
    return out


def feature_error(ex, probes: dict, images_under_do, n: int = 2000) -> float:
    """Max over treatment values x, images and hidden features of TVD(exact P(feature | do(x)),
    the frequencies the probe reads off ``images_under_do(x, n)`` (a dict of image arrays))."""
    from mdcm.fidelity import pooled
    from mdcm.query import tvd

    worst = 0.0
    for x in range(ex.schema[ex.treatment].classes):
        images = images_under_do(x, n)
        for img, probe in probes.items():
            freq = probe.frequencies(pooled(images[img]), ex.feature_classes)
            for f in ex.feature_names[img]:
                worst = max(worst, tvd(freq[f], ex.truth(f, {ex.treatment: x})))
    return worst


def one_run(
    name: str,
    size: str,
    seed: int,
    n: int | None,
    device: str,
    overrides: dict,
    fidelity: bool = True,
) -> dict:
    """Train one built-in at one size and measure it (in this process)."""
    import torch
    from train_quality import do_error

    from mdcm.examples import load_example
    from mdcm.fidelity import model_fidelity
    from mdcm.model import DCM, ModelConfig
    from mdcm.plan import make_plan
    from mdcm.train import Event, TrainConfig, train

    t0 = time.monotonic()
    ex = load_example(name, size=size, n=n, seed=seed)
    build_s = time.monotonic() - t0
    rss_data = _peak_rss_mb()
    probes = feature_probes(ex, seed) if fidelity else {}
    torch.manual_seed(seed)
    model = DCM(ex.study.schema, ModelConfig())
    plan = make_plan(ex.study.graph, ex.study.interventions)
    cfg = TrainConfig(**{"seed": seed, "device": device, **overrides})
    phases: dict[str, float] = {}
    last = {"t": time.monotonic(), "phase": "prepare"}

    def on_event(e: Event) -> None:
        now = time.monotonic()
        phase = "coder" if e.kind == "coder" else (f"stage {e.stage}" if e.stage >= 0 else "")
        if phase and phase != last["phase"]:
            phases[last["phase"]] = phases.get(last["phase"], 0.0) + now - last["t"]
            last.update(t=now, phase=phase)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    w0, c0 = time.monotonic(), time.process_time()
    res = train(model, plan, ex.study, cfg, on_event=on_event)
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    phases[last["phase"]] = phases.get(last["phase"], 0.0) + time.monotonic() - last["t"]
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    steps = sum(s.steps for s in res.stages)
    rss_train = _peak_rss_mb()  # the peak up to the end of training (data drawn, then trained)
    err, naive = do_error(model, ex)
    row: dict = {
        "example": name,
        "size": size,
        "seed": seed,
        "rows": ex.study.observational.n,
        "device": res.device,
        "build_s": round(build_s, 1),
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "phase_wall_s": {k: round(v, 1) for k, v in phases.items()},
        "steps": steps,
        "steps_per_s": round(steps / max(wall, 1e-9), 2),
        "stages": [s.to_json() for s in res.stages],
        "tvd": round(err, 4),
        "naive_tvd": round(naive, 4),
    }
    if probes:
        t = ex.treatment

        def generated(x: int, k: int) -> dict:
            return model.sample(k, {t: x}, seed=100 + x, chunk=256)

        def real(x: int, k: int) -> dict:
            return ex.sample(k, {t: x}, seed=100 + x)[0]

        row["img_err"] = round(feature_error(ex, probes, generated), 4)
        row["img_err_real"] = round(feature_error(ex, probes, real), 4)
    if fidelity:
        t = time.monotonic()
        fids = model_fidelity(model, ex.study, seed=seed)
        row["fidelity"] = {v: fid.summary() for v, fid in fids.items()}
        row["fidelity_s"] = round(time.monotonic() - t, 1)
    row["peak_rss_mb"] = round(_peak_rss_mb())
    row["peak_rss_data_mb"] = round(rss_data)
    row["peak_rss_train_mb"] = round(rss_train)
    row["peak_gpu_mb"] = None if peak_gpu is None else round(peak_gpu)
    row["load"] = Path("/proc/loadavg").read_text().split()[:3]
    return row


def _child(args: argparse.Namespace, name: str, size: str, seed: int) -> dict:
    """Run :func:`one_run` in a fresh process (its own peak RSS); returns its JSON row."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(
            {
                "name": name,
                "size": size,
                "seed": seed,
                "n": args.n,
                "device": args.device,
                "overrides": _overrides(args.set),
                "fidelity": not args.memory,
            }
        ),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"example": name, "size": size, "seed": seed, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or ():
        k, _, v = p.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _print_table(rows: list[dict]) -> None:
    hdr = (
        f"{'example':15} {'size':>4} {'seed':>4} {'rows':>6} {'train s':>8} {'cpu s':>7} "
        f"{'steps':>6} {'TVD':>6} {'naive':>6} {'img err':>7} {'real':>6} {'agree gap':>9} "
        f"{'FD (floor)':>14} {'sharp (floor)':>14} {'steps/s':>7} {'RSS MB':>7} {'GPU MB':>7}"
    )
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        if "error" in r:
            print(f"{r['example']:15} {r['size']:>4} {r['seed']:>4}  FAILED: {r['error'][-300:]}")
            continue
        fid = next(iter((r.get("fidelity") or {}).values()), None)
        gap = fd = sh = ""
        if fid:
            gaps = [abs(g - q) for g, q in fid["agreement"].values()]
            gap = f"{max(gaps):.3f}" if gaps else ""
            fd = f"{fid['frechet'][0]:.2f} ({fid['frechet'][1]:.2f})"
            sh = f"{fid['sharpness'][0]:.2f} ({fid['sharpness'][1]:.2f})"
        ie = "" if r.get("img_err") is None else f"{r['img_err']:.3f}"
        ier = "" if r.get("img_err_real") is None else f"{r['img_err_real']:.3f}"
        print(
            f"{r['example']:15} {r['size']:>4} {r['seed']:>4} {r['rows']:6d} "
            f"{r['train_wall_s']:8.1f} {r['train_cpu_s']:7.1f} {r['steps']:6d} {r['tvd']:6.3f} "
            f"{r['naive_tvd']:6.3f} {ie:>7} {ier:>6} {gap:>9} {fd:>14} {sh:>14} "
            f"{r['steps_per_s']:7.2f} {r['peak_rss_mb']:7d} {r['peak_gpu_mb'] or '':>7}"
        )
        for v, f in (r.get("fidelity") or {}).items():
            for flag in f["flags"]:
                print(f"    {v}: {flag}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="*", default=["xray", "colored_digits"])
    ap.add_argument("--sizes", nargs="*", default=["64"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--n", type=int, default=None, help="rows (default: the size's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="a TrainConfig field")
    ap.add_argument(
        "--memory",
        action="store_true",
        help="memory bar: 20,000 X-ray images at 128 px, 200 steps per stage, no fidelity",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        row = one_run(
            spec["name"],
            spec["size"],
            spec["seed"],
            spec["n"],
            spec["device"],
            spec["overrides"],
            spec["fidelity"],
        )
        print(json.dumps(row))
        return
    if args.memory:
        args.examples, args.sizes, args.n = ["xray"], ["128"], args.n or 20000
        args.set = ["steps=200", "coder_steps=200"] + (args.set or [])  # --set still wins
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for name in args.examples:
        for size in args.sizes:
            for seed in args.seeds:
                print(f"[{name} {size} seed {seed}] ...", flush=True)
                rows.append(_child(args, name, size, seed))
                print(json.dumps(rows[-1]), flush=True)
                (OUT / f"image_sizes_{stamp}.json").write_text(json.dumps(rows, indent=1))
    _print_table(rows)
    print(f"\nload average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"written {OUT / f'image_sizes_{stamp}.json'}")


if __name__ == "__main__":
    main()
