"""Slow checks of the image pipeline at large sizes (``pytest -m slow``; issue 11).

* bench/gpu_check.sh, forced onto its CPU fallback: the 128 px X-ray study goes through the whole
  pipeline (draw, 8-bit storage, conv image coder, both stages, fit checks in chunks, fidelity
  figures, feature probes) and the script prints the figures it promises;
* peak memory of the 128 px study stays bounded (a few hundred rows here; the 20,000-row bar is
  measured by ``python bench/image_sizes.py --memory``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_gpu_check_script_cpu_fallback_trains_the_128px_study():
    env = dict(os.environ, MDCM_GPU_CHECK_DEVICE="cpu", OMP_NUM_THREADS="1")
    env["PYTHON"] = str(ROOT / ".venv" / "bin" / "python")
    p = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "CPU smoke run" in out and "finished in" in out
    row = json.loads(next(line for line in out.splitlines() if line.startswith('{"example"')))
    assert row["size"] == "128" and row["device"] == "cpu" and "error" not in row
    assert 0.0 <= row["tvd"] <= 1.0 and row["steps"] > 0 and row["steps_per_s"] > 0
    fid = row["fidelity"]["X"]
    assert set(fid["agreement"]) == {"C", "N"}
    assert fid["frechet"][1] >= 0 and fid["sharpness"][1] > 0
    assert row["img_err"] is not None and row["img_err_real"] is not None
    assert row["peak_rss_mb"] < 2048
    for head in ("TVD", "img err", "FD (floor)", "sharp (floor)", "steps/s", "GPU MB"):
        assert head in out
