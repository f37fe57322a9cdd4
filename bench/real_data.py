"""Front-door studies over REAL images, trained through the dataset-folder path.

Builds two semi-synthetic studies from the real files in ``../shared/data`` (never needed by the
product or its tests): colorized MNIST digits as the image mediator of ``D -> I -> A; D <-> A``, and
PneumoniaMNIST chest X-rays as the image of ``C -> X -> N; C <-> N``. Each image is a real picture
chosen by a known mechanism on its label, so the exact P(outcome | do(treatment)) is known. The
study is written as a folder (``study.json`` + ``data.csv`` + PNG files), read back with
:func:`mdcm.data.load_study` exactly as a user's upload would be, then trained with the modular
plan. Prints the TVD to the exact answer next to the naive conditional's.

    python bench/real_data.py [--data ../shared/data] [--budget 240] [--which mnist pneumonia]
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

from train_quality import OUT, do_error  # noqa: E402

from mdcm.data import load_study  # noqa: E402
from mdcm.examples.semi_synthetic import (  # noqa: E402
    build_mnist_frontdoor,
    build_pneumonia_frontdoor,
)
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


def run(which: str, data: Path, budget: float, n: int, seed: int, side: int = 14) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        ex = build(which, data, Path(tmp) / which, n, seed, side)
        study = load_study(ex.study.path)  # the dataset-folder path, as for an upload
        ex = replace(ex, study=study)
        t_build = time.monotonic() - t0
        plan = make_plan(study.graph, study.interventions)
        torch.manual_seed(seed)
        model = DCM(study.schema, ModelConfig())
        cfg = TrainConfig(
            steps=100_000,
            time_limit_s=budget / len(plan.stages),
            seed=seed,
            check_every=100,
            tolerance=0.02,
        )
        t0 = time.monotonic()
        res = train(model, plan, study, cfg)
        wall = time.monotonic() - t0
        err, naive = do_error(model, ex)
    row = {
        "study": which,
        "rows": study.observational.n,
        "image_shape": list(
            study.schema[[v.name for v in study.schema.variables if v.kind == "image"][0]].shape
        ),
        "build_and_load_s": round(t_build, 1),
        "train_s": round(wall, 1),
        "stages": [s.to_json() for s in res.stages],
        "tvd_do": round(err, 4),
        "tvd_naive": round(naive, 4),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--which", nargs="*", default=["mnist", "pneumonia"])
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per study")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", type=int, default=14, help="image side in pixels (14 or 28)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"no real data folder at {args.data} (this benchmark needs ../shared/data)")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [run(w, args.data, args.budget, args.n, args.seed, args.side) for w in args.which]
    print(f"\n{'study':10} {'rows':>5} {'image':>9} {'train s':>8} {'TVD do':>7} {'naive':>6}")
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        print(
            f"{r['study']:10} {r['rows']:5d} {shape:>9} {r['train_s']:8.1f} "
            f"{r['tvd_do']:7.3f} {r['tvd_naive']:6.3f}"
        )
    (OUT / f"real_data_{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
