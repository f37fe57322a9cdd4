"""A real two-node Ray cluster on this machine: ``ray start --head`` and ``ray start --address``
from the test, ``mdcm train --ray-address`` spreading a built-in study's stages over both
nodes, then both nodes stopped cleanly.

Oracle: the one-process trainer (mdcm.train.train) with the same seeds: the model trained on the
cluster must have exactly its weights, hence its answers to P(Y | do(X)). The slow test kills the
cluster's head mid-run: the run must say so in one line, keep its finished stages, and resume on
local workers to the same weights."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mdcm import runs
from mdcm.examples import load_example
from mdcm.model import DCM, ModelConfig, load_model
from mdcm.plan import make_plan
from mdcm.query import interventional_distribution
from mdcm.train import TrainConfig, train

pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
N, STEPS = 600, 40
FLAGS = ["--example", "backdoor", "--n", str(N), "--steps", str(STEPS), "--device", "cpu"]
FLAGS += ["--set", "check_samples=256", "--set", "mmd_batch=64", "--set", "checkpoint_every=10"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Node:
    """One ``ray start --block`` process in its own process group (so that it and everything it
    starts can be stopped by that group's id)."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def send(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        self.send(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return None


def _leftovers(marker: str) -> list[int]:
    """Processes whose command line names this cluster's temp folder."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (p / "cmdline").read_bytes().decode("utf-8", "replace"):
                    out.append(int(p.name))
    return out


@pytest.fixture
def cluster(tmp_path: Path):
    """A head node and a worker node (1 CPU each) on loopback, with a token of their own."""
    temp = tempfile.mkdtemp(prefix="mdcm-ray-", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    ports = [f"--dashboard-agent-listen-port={_free_port()}", "--node-ip-address=127.0.0.1"]
    head = _Node(
        [
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            *ports,
        ],
        env,
        tmp_path / "head.log",
    )
    address = f"127.0.0.1:{port}"
    nodes = [head]
    try:
        _wait_nodes(address, 1, env, head)
        ports[0] = f"--dashboard-agent-listen-port={_free_port()}"
        nodes.append(
            _Node([f"--address={address}", "--num-cpus=1", *ports], env, tmp_path / "w.log")
        )
        _wait_nodes(address, 2, env, head)
        yield address, env, nodes, temp
    finally:
        for n in nodes:  # both at once: each takes seconds to stop its processes
            n.send()
        codes = [n.stop() for n in nodes]
        left = _leftovers(temp)
        for pid in left:  # ours by construction (they name our temp folder)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    assert all(c is not None for c in codes), "a Ray node did not stop on SIGTERM"
    assert not left, f"Ray processes left behind: {left}"


def _wait_nodes(address: str, n: int, env: dict, head: _Node, timeout: float = 90.0) -> None:
    probe = (
        "import ray,sys,time\n"
        f"ray.init(address={address!r}, log_to_driver=False, logging_level='error')\n"
        f"deadline = time.time() + {timeout}\n"
        f"while sum(x['Alive'] for x in ray.nodes()) < {n} and time.time() < deadline:\n"
        "    time.sleep(0.5)\n"
        "print(sum(x['Alive'] for x in ray.nodes()))\n"
    )
    deadline = time.monotonic() + timeout
    port = int(address.rsplit(":", 1)[1])
    while True:  # the head's port first (Ray's own connect retries for minutes)
        assert head.proc.poll() is None, head.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the head never opened its port"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        time.sleep(0.5)
    while time.monotonic() < deadline:
        assert head.proc.poll() is None, head.log.read_text()[-3000:]
        p = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
        )
        if p.returncode == 0 and p.stdout.strip().isdigit() and int(p.stdout.strip()) >= n:
            return
        time.sleep(1.0)
    raise AssertionError(f"the cluster never had {n} node(s): {p.stderr[-2000:]}")


def _mdcm(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mdcm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _reference(steps: int = STEPS) -> DCM:
    """What ``mdcm train FLAGS`` trains in one process (the CLI's seed, model and settings)."""
    study = load_example("backdoor", n=N, seed=0).study
    plan = make_plan(study.graph, list(study.interventions))
    cfg = TrainConfig(
        steps=steps, device="cpu", check_samples=256, mmd_batch=64, checkpoint_every=10
    )
    torch.manual_seed(cfg.seed)
    model = DCM(study.schema, ModelConfig(image_net="auto"))
    train(model, plan, study, cfg)
    return model


def _check_model(model_dir: Path, steps: int = STEPS) -> None:
    ref, got = _reference(steps), load_model(model_dir)
    a, b = ref.state_dict(), got.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    for x in (0, 1):  # the same weights answer the same: P(Y | do(X = x))
        p_ref = interventional_distribution(ref, "Y", {"X": x}, n=4000, seed=x).probs
        p_got = interventional_distribution(got, "Y", {"X": x}, n=4000, seed=x).probs
        assert np.array_equal(np.asarray(p_ref), np.asarray(p_got))


def test_two_node_cluster_trains_the_stages_on_both_nodes(cluster, tmp_path: Path):
    address, env, _nodes, _temp = cluster
    root = tmp_path / "runs"
    p = _mdcm("train", *FLAGS, "--ray-address", address, "--run-dir", str(root / "r1"), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    info = runs.run_status(root / "r1")
    assert info.status == "done" and info.config["cluster"] == {"address": address}
    starts = [e for e in runs.read_events(root / "r1") if e["kind"] == "stage_start"]
    assert sorted(e["stage"] for e in starts) == [0, 1, 2]
    assert len({e["worker"]["node"] for e in starts}) == 2, starts  # both nodes trained stages
    _check_model(info.model_dir)


@pytest.mark.slow
def test_cluster_that_goes_away_leaves_a_resumable_run(cluster, tmp_path: Path):
    address, env, nodes, _temp = cluster
    root = tmp_path / "runs"
    run = root / "r1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdcm", "train", *FLAGS, "--steps", "400", "--ray-address"]
        + [address, "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(
        e["kind"] == "checkpoint" and e["step"] == 400 for e in runs.read_events(run)
    ):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    nodes[0].stop(signal.SIGKILL)  # the head goes away, with no warning
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err[-3000:]
    assert lines[-1].startswith("mdcm: error: lost the Ray cluster at " + address), lines[-1]
    assert f"mdcm runs resume r1 --root {root}" in lines[-1]
    info = runs.run_status(run)
    assert info.status == "failed"
    state = json.loads((run / "checkpoint" / "checkpoint.json").read_text())
    assert state["scheduler"]["finished"], state["scheduler"]  # a finished stage was kept
    p = _mdcm("train", "--run-dir", str(run), "--resume", "--workers", "2", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    info = runs.run_status(run)
    assert info.status == "done" and info.config["cluster"] == {"workers": 2}
    ends = [e["stage"] for e in runs.read_events(run) if e["kind"] == "stage_end"]
    assert len(ends) == len(set(ends)) == 3  # no finished stage trained twice
    _check_model(info.model_dir, 400)  # the same model as without the fault
