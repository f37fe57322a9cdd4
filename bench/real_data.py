"""Front-door studies over REAL images, trained through the dataset-folder path.

Builds two semi-synthetic studies from the real files in ``../shared/data`` (never needed by the
product or its tests): colorized MNIST digits as the image mediator of ``D -> I -> A; D <-> A``, and
PneumoniaMNIST chest X-rays as the image of ``C -> X -> N; C <-> N``. Each image is a real picture
chosen by a known mechanism on its label, so the exact P(outcome | do(treatment)) is known. The
study is written as a folder (``study.json`` + ``data.csv`` + PNG files), read back with
:func:`mdcm.data.load_study` exactly as a user's upload would be, then trained with the modular
plan. Prints the TVD to the exact answer next to the naive conditional's, the image-feature
error of generated images next to real images' own (a probe trained on the real images' labels
reads them), and the fidelity figures of :mod:`mdcm.fidelity`.

    python bench/real_data.py [--data ../shared/data] [--budget 240] [--which mnist pneumonia]
    python bench/real_data.py --which pneumonia --side 28 --defaults --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from image_sizes import feature_error, feature_probes  # noqa: E402
from train_quality import OUT, do_error  # noqa: E402

from mdcm.data import load_study  # noqa: E402
from mdcm.examples.semi_synthetic import (  # noqa: E402
    build_mnist_frontdoor,
    build_pneumonia_frontdoor,
)
from mdcm.fidelity import model_fidelity  # noqa: E402
from mdcm.model import DCM, ModelConfig  # noqa: E402
from mdcm.plan import make_plan  # noqa: E402
from mdcm.readers import read_medmnist_npz, read_mnist_idx  # noqa: E402
from mdcm.train import TrainConfig, train  # noqa: E402


def build(which: str, data: Path, out: Path, n: int, seed: int, side: int = 14):
    if which == "mnist":
        images, labels = read_mnist_idx(
            data / "mnist-t10k-images-idx3-ubyte.gz", data / "mnist-t10k-labels-idx1-ubyte.gz"
        )
        return build_mnist_frontdoor(images, labels, out, n=n, seed=seed, side=side)
    images, labels = read_medmnist_npz(data / "pneumoniamnist.npz", split="train")
    return build_pneumonia_frontdoor(images, labels, out, n=n, seed=seed, side=side)


def run(
    which: str,
    data: Path,
    budget: float | None,
    n: int,
    seed: int,
    side: int = 14,
    fidelity: bool = True,
    overrides: dict | None = None,
) -> dict:
    """One study and seed; ``budget`` None: default training (``TrainConfig(seed=…)``)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        ex = build(which, data, Path(tmp) / which, n, seed, side)
        study = load_study(ex.study.path)  # the dataset-folder path, as for an upload
        ex = replace(ex, study=study)
        t_build = time.monotonic() - t0
        plan = make_plan(study.graph, study.interventions)
        torch.manual_seed(seed)
        model = DCM(study.schema, ModelConfig())
        if budget is None:
            cfg = replace(TrainConfig(seed=seed), **(overrides or {}))
        else:
            cfg = TrainConfig(
                steps=100_000,
                time_limit_s=budget / len(plan.stages),
                seed=seed,
                check_every=100,
                tolerance=0.02,
            )
        t0, c0 = time.monotonic(), time.process_time()
        res = train(model, plan, study, cfg)
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        err, naive = do_error(model, ex)
        extra: dict = {}
        if fidelity:
            probes = feature_probes(ex, seed)
            t = ex.treatment

            def generated(x: int, k: int) -> dict:
                return model.sample(k, {t: x}, seed=100 + x)

            def real(x: int, k: int) -> dict:
                return ex.sample(k, {t: x}, seed=100 + x)[0]

            extra["img_err"] = round(feature_error(ex, probes, generated), 4)
            extra["img_err_real"] = round(feature_error(ex, probes, real), 4)
            fids = model_fidelity(model, study, seed=seed)
            extra["fidelity"] = {v: fid.summary() for v, fid in fids.items()}
    row = {
        "study": which,
        "rows": study.observational.n,
        "image_shape": list(
            study.schema[[v.name for v in study.schema.variables if v.kind == "image"][0]].shape
        ),
        "build_and_load_s": round(t_build, 1),
        "seed": seed,
        "train_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "stages": [s.to_json() for s in res.stages],
        "tvd_do": round(err, 4),
        "tvd_naive": round(naive, 4),
        **extra,
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--which", nargs="*", default=["mnist", "pneumonia"])
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per study")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument(
        "--defaults", action="store_true", help="default training (TrainConfig(seed)), no budget"
    )
    ap.add_argument("--no-fidelity", action="store_true", help="skip probes and fidelity")
    ap.add_argument("--side", type=int, default=14, help="image side in pixels (14 or 28)")
    ap.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="with --defaults: a TrainConfig field"
    )
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, _, v in (p.partition("=") for p in args.set or ())}
    if not args.data.is_dir():
        sys.exit(f"no real data folder at {args.data} (this benchmark needs ../shared/data)")
    OUT.mkdir(parents=True, exist_ok=True)
    budget = None if args.defaults else args.budget
    rows = [  # one row per study and seed
        run(w, args.data, budget, args.n, seed, args.side, not args.no_fidelity, overrides)
        for w in args.which
        for seed in args.seeds
    ]
    print(
        f"\n{'study':10} {'seed':>4} {'rows':>5} {'image':>9} {'train s':>8} {'cpu s':>7} "
        f"{'TVD do':>7} {'naive':>6} {'img err':>7} {'real':>6}"
    )
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        ie, ir = r.get("img_err"), r.get("img_err_real")
        print(
            f"{r['study']:10} {r['seed']:4d} {r['rows']:5d} {shape:>9} {r['train_s']:8.1f} "
            f"{r['train_cpu_s']:7.1f} {r['tvd_do']:7.3f} {r['tvd_naive']:6.3f} "
            f"{'' if ie is None else f'{ie:.3f}':>7} {'' if ir is None else f'{ir:.3f}':>6}"
        )
        for v, f in (r.get("fidelity") or {}).items():
            print(f"    {v}: agreement {f['agreement']} FD {f['frechet']} sharp {f['sharpness']}")
    (OUT / f"real_data_{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
