"""Image coders by size: MLP vs conv, fit speed and what survives reconstruction.

For each built-in image example at each size, fits the image autoencoder (mdcm.coders.ImageCoder)
with an MLP body and with the conv body for the same CPU-time budget (``--cpu-seconds``, process
time: fair on a shared machine whose wall clock is inflated by other jobs), and reports: steps done,
CPU ms per step (batch 128, one thread), the reconstruction MSE on held-out real images, and the
fidelity figures
(mdcm.fidelity) of the reconstructions against real images, with the probe reading the
example's HIDDEN features (color/digit, opacity): probe accuracy on reconstructions next to real
images, Fréchet distance and sharpness with their real-vs-real floors. The reconstructions bound
what a latent image mechanism's decoded samples can carry (design.md §7). Peak RSS is per process.

    nice -n 10 python bench/image_coders.py --examples xray colored_digits --sizes 64 \
        --cpu-seconds 240
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdcm.coders import ImageCoder  # noqa: E402
from mdcm.examples import load_example  # noqa: E402
from mdcm.fidelity import image_fidelity  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def run(name: str, size: str, body: str, cpu_s: float, n: int, seed: int) -> dict:
    ex = load_example(name, size=size, n=10, seed=seed)
    img = next(v.name for v in ex.schema.variables if v.kind == "image")
    cols, hidden = ex.sample(n, seed=seed + 1)
    feats = {f: hidden[f] for f in ex.feature_names[img]}
    x = torch.as_tensor(cols[img])
    cut = int(0.8 * n)
    mlp_max = 0 if body == "conv" else 10**9
    torch.manual_seed(seed)
    t0 = time.process_time()
    ImageCoder(x.shape[1:], 8, 256, mlp_max=mlp_max).fit(x[:cut], steps=20, seed=seed)
    steps = max(20, int(cpu_s / ((time.process_time() - t0) / 20)))
    torch.manual_seed(seed)
    coder = ImageCoder(x.shape[1:], 8, 256, mlp_max=mlp_max)
    t0, w0 = time.process_time(), time.monotonic()
    coder.fit(x[:cut], steps=steps, seed=seed)
    fit_s, wall_s = time.process_time() - t0, time.monotonic() - w0
    with torch.no_grad():
        rec = torch.cat([coder.decode(coder.encode(x[i : i + 256])) for i in range(0, n, 256)])
    rec = rec.clamp(-1, 1)
    mse = float(((rec[cut:] - x[cut:]) ** 2).mean())
    fid = image_fidelity(
        img,
        cols[img],
        feats,
        rec.numpy(),
        feats,
        {f: ex.feature_classes[f] for f in feats},
        {f: "feature" for f in feats},
        n_eval=min(1000, n // 4),
        seed=seed,
    )
    row = {
        "example": name,
        "size": size,
        "body": body,
        "steps": steps,
        "cpu_ms_per_step": round(1000 * fit_s / steps, 1),
        "wall_s": round(wall_s, 1),
        "params": sum(p.numel() for p in coder.parameters()),
        "heldout_mse": round(mse, 5),
        "probe": {
            a.label: [round(a.generated_accuracy, 3), round(a.real_accuracy, 3)]
            for a in fid.agreement
        },
        "frechet": [round(fid.frechet, 3), round(fid.frechet_floor, 3)],
        "sharpness": [round(fid.sharpness, 3), round(fid.sharpness_floor, 3)],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="*", default=["xray", "colored_digits"])
    ap.add_argument("--sizes", nargs="*", default=["64"])
    ap.add_argument("--bodies", nargs="*", default=["mlp", "conv"])
    ap.add_argument("--cpu-seconds", type=float, default=240.0, help="fit budget per coder")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [
        run(e, s, b, args.cpu_seconds, args.n, args.seed)
        for e in args.examples
        for s in args.sizes
        for b in args.bodies
    ]
    print(
        f"\n{'example':15} {'size':>4} {'body':5} {'steps':>6} {'cpu ms':>7} {'MSE':>8} "
        f"{'probe rec/real':>24} {'FD (floor)':>14} {'sharp (floor)':>14}"
    )
    for r in rows:
        probe = " ".join(f"{g:.2f}/{q:.2f}" for g, q in r["probe"].values())
        print(
            f"{r['example']:15} {r['size']:>4} {r['body']:5} {r['steps']:6d} "
            f"{r['cpu_ms_per_step']:7.1f} "
            f"{r['heldout_mse']:8.5f} {probe:>24} "
            f"{r['frechet'][0]:6.2f} ({r['frechet'][1]:.2f}) "
            f"{r['sharpness'][0]:6.2f} ({r['sharpness'][1]:.2f})"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"image_coders_{stamp}.json").write_text(json.dumps(rows, indent=1))
    print(f"\nload average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
