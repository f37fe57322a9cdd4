"""Scale-out (mdcm/scheduler.py): independent stages trained at the same time on Ray workers.

Oracles: the weights of the plain one-process trainer (mdcm.train.train) with the same seeds —
a parallel run, a run whose worker is killed mid-stage, and a stopped-and-resumed run must all
end on exactly those weights; hand-computed schedules for the schedule arithmetic; the
command line's exit status and its one-line messages for bad input."""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import SMALL  # the small networks of the trainer's own tests

from mdcm import runs, scheduler
from mdcm.examples import load_example
from mdcm.graph import CausalGraph
from mdcm.model import DCM
from mdcm.plan import make_plan
from mdcm.scheduler import (
    ClusterError,
    ClusterInfo,
    Resources,
    cluster_settings,
    critical_path,
    list_schedule,
    stage_resources,
    train_parallel,
)
from mdcm.train import TrainConfig, TrainingError, train

ray = pytest.importorskip("ray")

CFG = TrainConfig(
    steps=30,
    batch_size=16,
    mmd_batch=64,
    check_every=10,
    check_samples=256,
    coder_steps=20,
    log_every=5,
    tolerance=0.0,
    checkpoint_every=10,
    seed=3,
    device="cpu",
)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 worker slots) for the tests of this file."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def _case(name: str, n: int = 300):
    ex = load_example(name, n=n, seed=0)
    plan = make_plan(ex.study.graph, list(ex.study.interventions))
    torch.manual_seed(0)
    return ex.study, plan, DCM(ex.study.schema, SMALL)


@pytest.fixture(scope="module")
def backdoor_ref() -> DCM:
    """backdoor trained in one process with CFG (the oracle of the tests below)."""
    study, plan, ref = _case("backdoor")
    train(ref, plan, study, CFG)
    return ref


def _same(a: DCM, b: DCM) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


# ---------------------------------------------------------------------- pure parts
def test_schedule_arithmetic_against_hand_computed_values():
    plan = make_plan(CausalGraph.parse("X -> M -> Y; X <-> Y; Z"))  # {M} then {X,Y}; {Z}
    ids = {s.trains: s.id for s in plan.stages}
    m, xy, z = ids[("M",)], ids[("X", "Y")], ids[("Z",)]
    assert plan.stages[ids[("X", "Y")]].depends_on == (m,)
    dur = {m: 2.0, xy: 3.0, z: 4.0}
    assert critical_path(plan, dur) == 5.0  # M then {X, Y}
    assert list_schedule(plan, dur, 1) == 9.0  # one worker: the sum
    # two workers: M and Z start together; {X,Y} starts at 2 on M's worker and ends at 5
    assert list_schedule(plan, dur, 2) == 5.0
    assert list_schedule(plan, dur, 3) == 5.0
    with pytest.raises(ClusterError, match="at least 1"):
        list_schedule(plan, dur, 0)


def test_resources_per_stage_kind_and_device():
    kinds = {"C": "categorical", "X": "image"}
    assert stage_resources(kinds, ["X"], "auto", 0) == Resources(1.0, 0.0)  # no GPU there
    assert stage_resources(kinds, ["X"], "auto", 2, 0.25) == Resources(1.0, 0.25)
    assert stage_resources(kinds, ["C"], "auto", 2) == Resources(1.0, 0.0)  # labels: CPU
    assert stage_resources(kinds, ["C"], "cuda", 0) == Resources(1.0, 0.5)
    assert stage_resources(kinds, ["X"], "cpu", 4) == Resources(1.0, 0.0)
    two = ClusterInfo("x", "h:1", ({"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}), False)
    assert two.fits(Resources(2.0, 0.5)) and not two.fits(Resources(1.0, 2.0))
    assert two.cpus == 3.0 and two.gpus == 1.0


@pytest.mark.parametrize(
    ("workers", "address", "match"),
    [
        (0, None, "at least 1, not 0"),
        (-3, None, "at least 1, not -3"),
        (True, None, "whole number"),
        (2.5, None, "whole number"),
        (None, "nonsense", "bad Ray cluster address"),
        (None, "host:99999", "bad Ray cluster address"),
        (2, "127.0.0.1:6379", "not both"),
    ],
)
def test_bad_cluster_settings_are_refused(workers, address, match):
    with pytest.raises(ClusterError, match=match):
        cluster_settings(workers, address)


def test_cluster_settings_and_run_config():
    assert cluster_settings() == {}
    assert cluster_settings(3) == {"workers": 3}
    assert cluster_settings(None, "ray://10.0.0.5:10001") == {"address": "ray://10.0.0.5:10001"}
    assert scheduler.recorded_cluster({"cluster": {"address": "auto"}}) == {"address": "auto"}
    with pytest.raises(ClusterError):
        scheduler.recorded_cluster({"cluster": {"workers": 0}})
    with pytest.raises(ClusterError, match="cannot reach"):
        scheduler.probe("127.0.0.1:1")


def test_recorder_keeps_the_progress_of_stages_that_train_at_once(tmp_path: Path):
    run = runs.create_run(tmp_path, {"plan": "modular", "train": {}})
    rec = runs.RunRecorder(run)
    for step in range(1, 41):  # two stages interleaved, far faster than the throttle
        for stage in (0, 1):
            rec.on_event({"kind": "step", "stage": stage, "step": step, "elapsed_s": 0.0})
    rec.on_event({"kind": "stage_end", "stage": 1, "step": 40, "elapsed_s": 0.0})
    steps = runs.read_events(run, kinds=("step",))
    assert {e["stage"] for e in steps} == {0, 1}
    assert max(e["step"] for e in steps if e["stage"] == 1) == 40  # kept before its end
    assert len(steps) < 20  # still throttled
    runs.set_run_cluster(run, workers=2)
    assert runs.run_status(run).config["cluster"] == {"workers": 2}
    runs.set_run_cluster(run)
    assert "cluster" not in runs.run_status(run).config


# ---------------------------------------------------------------------- on a local Ray
@pytest.mark.parametrize("name", ["backdoor", "xray"])
def test_parallel_run_gives_the_weights_of_the_one_process_trainer(local_ray, name, tmp_path):
    """backdoor: three independent stages (and a continuous variable's data scale); xray: an
    image coder fitted first, then a stage that runs the image mechanism frozen."""
    study, plan, ref = _case(name)
    model = copy.deepcopy(ref)
    train(ref, plan, study, CFG)
    events: list[dict] = []
    res = train_parallel(model, plan, study, CFG, events.append, checkpoint_dir=tmp_path / "ck")
    assert not res.stopped and [s.stage for s in res.stages] == [s.id for s in plan.stages]
    assert all(s.steps == CFG.steps for s in res.stages)
    assert _same(ref, model) == []
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "done" and kinds.count("stage_start") == len(plan.stages)
    starts = [e for e in events if e["kind"] == "stage_start"]
    assert all({"node", "host", "pid"} <= set(e["worker"]) for e in starts)
    if name == "backdoor":  # three independent stages on two slots: two of them overlapped
        spans = {e["stage"]: [e["time"], None] for e in events if e["kind"] == "stage_start"}
        for e in events:
            if e["kind"] == "stage_end":
                spans[e["stage"]][1] = e["time"]
        overlaps = [
            (a, b)
            for a in spans
            for b in spans
            if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
        ]
        assert overlaps, spans
    assert not list((tmp_path / "ck").glob("stage-*"))  # finished stages leave no stage folder
    with pytest.raises(TrainingError, match="parallel run"):  # the sequential trainer refuses
        train(copy.deepcopy(ref), plan, study, CFG, checkpoint_dir=tmp_path / "ck", resume=True)


def test_worker_killed_mid_stage_is_retried_from_its_checkpoint(local_ray, tmp_path):
    # stages long enough (about 2 s each on 2 cores) that the driver sees a mid-stage
    # checkpoint while its stage still runs: with CFG's 30 steps a stage often ended before
    # the driver's next poll, and the kill then hit an idle worker
    cfg = dataclasses.replace(CFG, steps=500, check_every=250, checkpoint_every=25)
    study, plan, ref = _case("backdoor")
    train(ref, plan, study, cfg)
    study, plan, model = _case("backdoor")
    events: list[dict] = []
    killed: dict = {}
    pids: dict[int, int] = {}
    ended: set[int] = set()

    def on_event(ev: dict) -> None:
        events.append(ev)
        if ev["kind"] == "stage_start":
            pids[ev["stage"]] = ev["worker"]["pid"]
        if ev["kind"] == "stage_end":
            ended.add(ev["stage"])
        if (
            ev["kind"] == "checkpoint"
            and 0 < ev["step"] <= cfg.steps // 2
            and ev["stage"] not in ended
            and not killed
        ):
            killed.update(stage=ev["stage"], step=ev["step"])
            os.kill(pids[ev["stage"]], signal.SIGKILL)  # no chance to clean up

    res = train_parallel(model, plan, study, cfg, on_event, checkpoint_dir=tmp_path / "ck")
    assert killed and not res.stopped
    retry = [e for e in events if e["kind"] == "retry"]
    assert len(retry) == 1 and retry[0]["stage"] == killed["stage"]
    assert retry[0]["step"] >= killed["step"]  # from its last checkpoint, not from scratch
    starts = [e["stage"] for e in events if e["kind"] == "stage_start"]
    assert sorted(starts) == sorted([s.id for s in plan.stages] + [killed["stage"]])
    # a stage merged by the driver (its checkpoint event) is never started again
    merged = [
        i for i, e in enumerate(events) if e["kind"] == "checkpoint" and e["step"] == cfg.steps
    ]
    for i in merged:
        sid = events[i]["stage"]
        assert not any(e["kind"] == "stage_start" and e["stage"] == sid for e in events[i:])
    assert len(merged) == len(plan.stages)
    assert _same(ref, model) == []  # the same model as without the fault


def test_stop_then_resume_and_a_sequential_checkpoint_resumes_in_parallel(
    local_ray, backdoor_ref, tmp_path
):
    study, plan, _ = _case("backdoor")
    ref = backdoor_ref
    # a parallel run stopped as soon as one stage has ended, then resumed in parallel
    ended: list[int] = []
    first = _case("backdoor")[2]
    res = train_parallel(
        first,
        plan,
        study,
        CFG,
        lambda ev: ended.append(ev["stage"]) if ev["kind"] == "stage_end" else None,
        should_stop=lambda: bool(ended),
        checkpoint_dir=tmp_path / "a",
    )
    assert res.stopped and 1 <= len(res.stages) < len(plan.stages)
    again = _case("backdoor")[2]
    res = train_parallel(again, plan, study, CFG, checkpoint_dir=tmp_path / "a", resume=True)
    assert not res.stopped and len(res.stages) == len(plan.stages)
    assert _same(ref, again) == []
    # a one-process run stopped mid-stage resumes on Ray, step for step
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > CFG.steps + 12

    seq = _case("backdoor")[2]
    assert train(seq, plan, study, CFG, should_stop=stop, checkpoint_dir=tmp_path / "b").stopped
    other = _case("backdoor")[2]
    train_parallel(other, plan, study, CFG, checkpoint_dir=tmp_path / "b", resume=True)
    assert _same(ref, other) == []


def test_a_stage_the_cluster_cannot_host_is_refused_before_anything_runs(local_ray, tmp_path):
    study, plan, model = _case("backdoor")
    cfg = dataclasses.replace(CFG, device="cuda")
    with pytest.raises(ClusterError, match=r"stage \d .*asks for 1 CPU and 0.5 GPU.*device cpu"):
        train_parallel(model, plan, study, cfg, checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


# ---------------------------------------------------------------------- command line
def _mdcm(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mdcm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "match"),
    [
        (["--workers", "0"], {}, "argument --workers: expected a number of workers of at least 1"),
        (["--workers", "-2"], {}, "at least 1, got -2"),
        (["--ray-address", "127.0.0.1:1"], {}, "cannot reach a Ray cluster at 127.0.0.1:1"),
        ([], {"MDCM_RAY_ADDRESS": "127.0.0.1:1"}, "cannot reach a Ray cluster"),
        (["--ray-address", "no port"], {}, "bad Ray cluster address"),
        (["--workers", "2", "--ray-address", "127.0.0.1:1"], {}, "not both"),
    ],
)
def test_cli_bad_cluster_input_is_one_line_and_exit_2(tmp_path, args, env, match):
    run = tmp_path / "runs" / "r1"
    p = _mdcm("train", "--example", "bow", "--run-dir", str(run), *args, env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdcm: error: ") and match in lines[0], lines
    assert not (run / "model").exists()


def test_cli_trains_a_run_on_local_workers_and_runs_show_it(tmp_path):
    root = tmp_path / "runs"
    p = _mdcm(
        "train",
        "--example",
        "backdoor",
        "--n",
        "300",
        "--steps",
        "20",
        "--set",
        "check_samples=256",
        "--set",
        "mmd_batch=64",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--run-dir",
        str(root / "r1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    info = runs.run_status(root / "r1")
    assert info.status == "done" and info.config["cluster"] == {"workers": 2}
    events = runs.read_events(root / "r1")
    assert {e["stage"] for e in events if e["kind"] == "stage_end"} == {0, 1, 2}
    assert any(e["kind"] == "submit" for e in events)
    shown = _mdcm("runs", "show", "r1", "--root", str(root), timeout=60)
    assert shown.returncode == 0 and '"cluster": {"workers": 2}' in shown.stdout
    # a GPU asked of a cluster without one: one line, exit 2, nothing trained or saved
    p = _mdcm(
        "train",
        "--example",
        "bow",
        "--device",
        "cuda",
        "--workers",
        "1",
        "--run-dir",
        str(root / "r2"),
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "asks for 1 CPU and 0.5 GPU" in lines[-1], p.stderr[-2000:]
    assert lines[-1].startswith("mdcm: error: ")
    assert not (root / "r2" / "model").exists() and runs.run_status(root / "r2").status == "failed"
