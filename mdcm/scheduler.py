"""Scale-out: the independent stages of a plan trained at the same time on Ray workers.

Modular-DCM (Rahman & Kocaoglu, ICML 2024) trains a causal model stage by stage; stages with no
dependency path between them (a plan's parallel levels, ``Stage.depends_on``) can train at the
same time (design.md §5b). This module sits between :func:`mdcm.train.train_stage` (one stage,
run inside a worker) and :mod:`mdcm.runs` (a whole run on disk):

1. What precedes every stage (the data scales of continuous variables, the image coders'
   fit) runs first, in one task.
2. Every stage whose dependencies are finished is submitted as a Ray task that carries the model
   with the weights trained so far and the study (both through Ray's object store), highest
   remaining chain of work first (critical-path list scheduling), at most as many at once as the
   cluster has CPUs. A stage's result depends only on the weights it runs frozen, its own seed
   and the data, so 1 or N workers give the same model, weight for weight.
3. The worker streams the trainer's events and mid-stage checkpoints back through a small actor
   (the *channel*), which also carries stop requests to the workers. The driver hands the events
   to ``on_event`` (a run folder's ``events.jsonl``) and writes the checkpoints, so the run
   folder stays the single source of truth even when the workers share no disk with it.
4. When a stage ends, the driver merges the trained mechanisms (the ``generators.V.*`` weights of
   ``stage.trains``) into its model and saves the checkpoint at once: a finished stage is never
   trained again.

Faults: a worker or node lost mid-stage has its stage resubmitted from the stage's last
checkpoint (at most ``retries`` times; resuming a checkpoint is step-for-step exact, so the
result is the same as without the fault). A cluster whose head goes away ends the run with
:class:`ClusterLostError`; the checkpoint folder then holds every finished stage and the last
checkpoint of every running one, and resuming continues from there.

Checkpoint folder of a parallel run::

    checkpoint.json, checkpoint.safetensors, optim.pt   the model with every finished stage
                                                         merged; state["scheduler"]["finished"]
    stage-<id>/                                          the last checkpoint of an unfinished
                                                         stage (mdcm.checkpoints format)

A sequential checkpoint (:func:`mdcm.train.train`) resumes here too; the sequential trainer
refuses a parallel one. ``import mdcm.scheduler`` imports neither torch nor ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .data import Study
    from .model import DCM
    from .plan import Plan, Stage
    from .train import TrainConfig, TrainResult

__all__ = [
    "ADDRESS_ENV",
    "ClusterError",
    "ClusterInfo",
    "ClusterLostError",
    "Resources",
    "cluster_settings",
    "connect",
    "critical_path",
    "list_schedule",
    "probe",
    "recorded_cluster",
    "stage_heights",
    "stage_resources",
    "train_parallel",
    "validate_address",
    "validate_workers",
]

#: environment variable naming the Ray cluster to train on (like ``--ray-address``)
ADDRESS_ENV = "MDCM_RAY_ADDRESS"
#: GPU share of a stage that trains an image mechanism (two such stages share one GPU)
GPU_FRACTION = 0.5
#: seconds between two ``step`` events a worker sends for one stage (others always sent)
STEP_INTERVAL_S = 0.25
#: seconds between two checks that the cluster's head (its GCS port) answers
HEALTH_EVERY_S = 1.0
#: seconds the head may stay silent before the watchdog calls ``on_lost`` (Ray itself ends a
#: driver whose head has been gone for 60 s, from inside its own calls, with no message of ours)
LOST_GRACE_S = 15.0
_POLL_S = 0.2
_ADDRESS_RE = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})\Z")


class ClusterError(ValueError):
    """The Ray cluster cannot be used as asked: a bad worker count or address, an unreachable
    cluster, or one without the resources a stage needs. The message says what to change."""


class ClusterLostError(ClusterError):
    """The cluster went away during training; everything finished is in the checkpoint."""


# ---------------------------------------------------------------------- input checks
def validate_workers(workers: object) -> int:
    """``workers`` as a positive whole number; :class:`ClusterError` otherwise."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise ClusterError(f"the number of workers must be a whole number, not {workers!r}")
    if workers < 1:
        raise ClusterError(f"the number of workers must be at least 1, not {workers}")
    return workers


def validate_address(address: object) -> str:
    """A Ray address: ``HOST:PORT`` (the head's GCS port), ``ray://HOST:PORT`` (Ray Client) or
    ``auto`` (the cluster started on this machine); :class:`ClusterError` otherwise."""
    text = str(address).strip() if isinstance(address, str) else ""
    if text == "auto":
        return text
    m = _ADDRESS_RE.match(text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ClusterError(
            f"bad Ray cluster address {str(address)[:100]!r}: use HOST:PORT (the head node's "
            "port, e.g. 10.0.0.5:6379), ray://HOST:10001 or auto"
        )
    return text


def cluster_settings(workers: object = None, address: object = None) -> dict[str, Any]:
    """Where a run trains, as its config records it (``config["cluster"]``): ``{"workers": N}``
    (N local Ray workers), ``{"address": A}`` (a Ray cluster) or ``{}`` (one process, no Ray).
    :class:`ClusterError` for a bad count or address, or for both at once."""
    if workers is not None and address is not None:
        raise ClusterError("give either a number of local workers or a cluster address, not both")
    if workers is not None:
        return {"workers": validate_workers(workers)}
    if address is not None:
        return {"address": validate_address(address)}
    return {}


def recorded_cluster(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`cluster_settings` of a run config's ``cluster`` entry (checked again: run.json is a
    file anyone could have edited)."""
    entry = config.get("cluster") or {}
    if not isinstance(entry, Mapping) or set(entry) - {"workers", "address"}:
        raise ClusterError(
            f"the run's cluster setting {entry!r} is not {{workers: N}} or {{address: HOST:PORT}}"
        )
    return cluster_settings(entry.get("workers"), entry.get("address"))


# ---------------------------------------------------------------------- resources
@dataclass(frozen=True)
class Resources:
    """What one task asks of the cluster."""

    cpus: float = 1.0
    gpus: float = 0.0

    def describe(self) -> str:
        out = f"{self.cpus:g} CPU"
        return out + (f" and {self.gpus:g} GPU" if self.gpus else "")


def stage_resources(
    kinds: Mapping[str, str],
    trains: Sequence[str],
    device: str,
    cluster_gpus: float,
    gpu_fraction: float = GPU_FRACTION,
) -> Resources:
    """The resources of a task that trains ``trains`` (``kinds``: variable -> kind): one CPU,
    plus ``gpu_fraction`` of a GPU when the task trains an image mechanism and the cluster has
    GPUs (device "auto"), always (device "cuda") or never (device "cpu")."""
    if device == "cpu":
        return Resources()
    if device != "auto" or (cluster_gpus > 0 and any(kinds[v] == "image" for v in trains)):
        return Resources(1.0, gpu_fraction)
    return Resources()


@dataclass(frozen=True)
class ClusterInfo:
    """The Ray cluster a run trains on: where it is and what its live nodes offer."""

    address: str  # "local" or the address given
    gcs_address: str
    nodes: tuple[Mapping[str, float], ...]  # total resources of each live node
    local: bool

    @property
    def cpus(self) -> float:
        return sum(n.get("CPU", 0.0) for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.get("GPU", 0.0) for n in self.nodes)

    def fits(self, res: Resources) -> bool:
        """Whether some live node can run a task asking for ``res``."""
        return any(
            n.get("CPU", 0.0) >= res.cpus and n.get("GPU", 0.0) >= res.gpus for n in self.nodes
        )

    def describe(self) -> str:
        where = "a local Ray instance" if self.local else f"the Ray cluster at {self.address}"
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{where} ({len(self.nodes)} node(s), {self.cpus:g} CPU{gpus})"


# ---------------------------------------------------------------------- schedule arithmetic
def _deps(plan: Plan) -> dict[int, tuple[int, ...]]:
    return {s.id: tuple(s.depends_on) for s in plan.stages}


def stage_heights(plan: Plan, cost: Mapping[int, float]) -> dict[int, float]:
    """For each stage, the longest chain of work from its start to the end of the plan (its own
    cost included): the priority of critical-path list scheduling (HLFET)."""
    after: dict[int, list[int]] = {s.id: [] for s in plan.stages}
    for s in plan.stages:
        for d in s.depends_on:
            after[d].append(s.id)
    height: dict[int, float] = {}
    for s in reversed(plan.stages):  # plan order is topological
        height[s.id] = cost[s.id] + max((height[t] for t in after[s.id]), default=0.0)
    return height


def critical_path(plan: Plan, durations: Mapping[int, float]) -> float:
    """The longest chain of stage durations along the dependencies: no number of workers can
    train the plan faster."""
    return max(stage_heights(plan, durations).values(), default=0.0)


def list_schedule(
    plan: Plan,
    durations: Mapping[int, float],
    workers: int,
    priority: Mapping[int, float] | None = None,
) -> float:
    """Wall time of the plan's stages packed on ``workers`` workers along the dependencies:
    whenever a worker is free it takes the ready stage of highest ``priority`` (default: its
    height, :func:`stage_heights`; ties in plan order). The schedule :func:`train_parallel`
    follows, here with known durations."""
    validate_workers(workers)
    prio = dict(priority) if priority is not None else stage_heights(plan, durations)
    order = {s.id: i for i, s in enumerate(plan.stages)}
    deps = _deps(plan)
    end: dict[int, float] = {}
    free = [0.0] * workers
    left = [s.id for s in plan.stages]
    now = 0.0
    while left:
        ready = [s for s in left if all(d in end and end[d] <= now for d in deps[s])]
        idle = [i for i, t in enumerate(free) if t <= now]
        if ready and idle:
            s = min(ready, key=lambda s: (-prio[s], order[s]))
            free[idle[0]] = end[s] = now + durations[s]
            left.remove(s)
            continue
        now = min(t for t in [*free, *end.values()] if t > now)
    return max(end.values(), default=0.0)


def _work_estimate(stage: Stage) -> float:
    """A stage's relative cost before any is measured: the variables its losses read."""
    return float(sum(len(t.matches) + len(t.given) for t in stage.targets) or 1)


# ---------------------------------------------------------------------- connecting
def _ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is in requirements.txt
        raise ClusterError(
            "parallel training needs Ray: pip install 'ray==2.60.0' (or pip install 'mdcm[ray]')"
        ) from None
    return ray


def probe(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast (ClusterError) when nothing listens at ``address`` (Ray itself retries for
    minutes before it gives up)."""
    address = validate_address(address)
    if address == "auto":
        return
    m = _ADDRESS_RE.match(address)
    assert m is not None
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {why}") from None


def _reachable(gcs_address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _cluster_info(ray: Any, address: str, local: bool) -> ClusterInfo:
    nodes = tuple(
        {k: float(v) for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU")}
        for n in ray.nodes()
        if n.get("Alive")
    )
    return ClusterInfo(address, ray.get_runtime_context().gcs_address, nodes, local)


@contextlib.contextmanager
def connect(workers: int | None = None, address: str | None = None) -> Iterator[ClusterInfo]:
    """Ray for the duration of a ``with`` block.

    ``workers=N``: a local Ray instance started in this process with N worker slots (shut down
    at the end). ``address``: an existing cluster (this process joins as its driver and leaves
    at the end; the workers get this process's ``mdcm`` code through Ray's ``py_modules``).
    Neither: the Ray connection this process already has (``ray.init`` done by the caller)."""
    ray = _ray()
    if workers is not None and address is not None:
        raise ClusterError("give either a number of local workers or a cluster address, not both")
    if workers is None and address is None:
        if not ray.is_initialized():
            raise ClusterError("give a number of workers or a Ray cluster address")
        yield _cluster_info(ray, "current", False)
        return
    if ray.is_initialized():
        raise ClusterError("Ray is already initialised in this process; use it (no arguments)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    common = {"namespace": "mdcm", "log_to_driver": False, "logging_level": "warning"}
    if workers is not None:
        validate_workers(workers)
        # Ray lowers its workers' priority (nice +15) by default; local workers should train
        # at the priority of the command that started them, like the one-process trainer
        os.environ.setdefault("RAY_worker_niceness", "0")
        import torch

        gpus = torch.cuda.device_count()
        ray.init(num_cpus=workers, num_gpus=gpus, include_dashboard=False, **common)
        label = "local"
    else:
        address = validate_address(address)
        probe(address)
        import mdcm

        env = {"py_modules": [str(Path(mdcm.__file__).resolve().parent)]}
        try:
            ray.init(address=address, runtime_env=env, **common)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, auth errors
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise ClusterError(_connect_error(address, exc)) from None
        label = address
    try:
        info = _cluster_info(ray, label, workers is not None)
        if not info.nodes or info.cpus < 1:
            raise ClusterError(f"{info.describe()} has no CPU to train on")
        yield info
    finally:
        _shutdown(ray)


def _connect_error(address: str, exc: BaseException) -> str:
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(type(x).__name__ == "AuthenticationError" for x in chain):
        return (
            f"the Ray cluster at {address} refused this process's token: set RAY_AUTH_MODE=token "
            "and give the cluster's token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        )
    return f"cannot connect to a Ray cluster at {address}: {_first_line(exc)}"


def _shutdown(ray: Any, timeout_s: float = 20.0) -> None:
    """``ray.shutdown()``, given up after ``timeout_s`` (it can hang when the head is gone)."""
    t = threading.Thread(target=ray.shutdown, daemon=True)
    t.start()
    t.join(timeout_s)


# ---------------------------------------------------------------------- the worker side
class _Channel:
    """The actor between the driver and its workers: workers ``put`` events and checkpoints and
    learn whether a stop was requested; the driver ``drain`` s them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, Any]] = []
        self.stop = False

    def put(self, items: list[tuple[str, str, Any]]) -> bool:
        self.items.extend(items)
        return self.stop

    def drain(self) -> list[tuple[str, str, Any]]:
        out, self.items = self.items, []
        return out

    def request_stop(self) -> None:
        self.stop = True


class _Forwarder:
    """Inside a task: sends the trainer's events through the channel (``step`` events at most
    every STEP_INTERVAL_S, the latest one kept) and answers ``should_stop`` from it."""

    def __init__(self, channel: Any, key: str, worker: Mapping[str, Any]) -> None:
        self.channel, self.key, self.worker = channel, key, dict(worker)
        self.buf: list[tuple[str, str, Any]] = []
        self.pending: dict | None = None
        self.last = 0.0
        self.stop = False

    def event(self, event: Any) -> None:
        ev = event.to_json()
        ev["time"] = time.time()
        if ev["kind"] in ("stage_start", "coder") and ev["step"] == 0:
            ev["worker"] = self.worker
        if ev["kind"] == "step":
            self.pending = ev
            if time.monotonic() - self.last >= STEP_INTERVAL_S:
                self.flush()
            return
        self.flush(("event", self.key, ev))

    def checkpoint(self, ck: Any) -> None:
        self.flush(("checkpoint", self.key, ck))

    def flush(self, *items: tuple[str, str, Any]) -> None:
        if self.pending is not None:
            self.buf.append(("event", self.key, self.pending))
            self.pending = None
        self.buf.extend(items)
        import ray

        out, self.buf = self.buf, []
        self.stop = bool(ray.get(self.channel.put.remote(out)))
        self.last = time.monotonic()

    def should_stop(self) -> bool:
        if time.monotonic() - self.last >= 2 * STEP_INTERVAL_S:
            self.flush()
        return self.stop


def _warm() -> int:
    """A Ray task that imports the trainer (torch), so that a worker is ready when its first
    stage comes (started for every worker slot while the driver sets up)."""
    import mdcm.train  # noqa: F401

    return os.getpid()


def _worker_info() -> dict[str, Any]:
    import ray

    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id()[:12], "host": socket.gethostname(), "pid": os.getpid()}


def _prepare_job(
    channel: Any,
    model: DCM,
    plan: Plan,
    study: Study,
    config: TrainConfig,
    pretrained: Mapping[str, Any] | None,
) -> tuple[bool, dict]:
    """A Ray task: what precedes every stage (:func:`mdcm.train.prepare_stages`: data scales,
    image coders); (finished, the state entries it changed)."""
    from .train import prepare_stages

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fwd = _Forwarder(channel, "prepare", _worker_info())
    done = prepare_stages(model, plan, study, config, fwd.event, fwd.should_stop, pretrained)
    fwd.flush()
    after = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return done, {k: v for k, v in after.items() if not before[k].cpu().equal(v)}


def _stage_job(
    channel: Any,
    model: DCM,
    plan: Plan,
    study: Study,
    stage_id: int,
    config: TrainConfig,
    ck: Any,
    pretrained: Mapping[str, Any] | None,
) -> tuple[dict, dict]:
    """A Ray task: train one stage (:func:`mdcm.train.train_stage`), resuming ``ck`` (its last
    checkpoint) when given; (summary JSON, trained state). Mid-stage checkpoints go to a
    private folder and are sent to the driver through the channel as they are written."""
    from . import checkpoints
    from .train import train_stage

    fwd = _Forwarder(channel, f"stage-{stage_id}", _worker_info())
    with tempfile.TemporaryDirectory(prefix=f"mdcm-stage{stage_id}-") as tmp:
        ckdir = Path(tmp)
        if ck is not None:
            checkpoints.save(ckdir, *ck)

        def on_event(event: Any) -> None:
            if event.kind == "checkpoint":  # the checkpoint reaches the driver before its event
                fwd.checkpoint(checkpoints.load(ckdir))
            fwd.event(event)

        res = train_stage(
            model,
            plan,
            study,
            stage_id,
            config,
            on_event,
            fwd.should_stop,
            ckdir,
            resume=ck is not None,
            pretrained=pretrained,
        )
        fwd.flush()
    return res.summary.to_json(), res.state


# ---------------------------------------------------------------------- the driver
@dataclass
class _Job:
    key: str  # "prepare" or "stage-<id>"
    stage: int | None
    attempt: int = 1
    resources: Resources = field(default_factory=Resources)


class _WorkerLost(Exception):
    """A task ended because its worker process or node went away (not because of its code)."""


#: Ray errors that mean a task's worker or node was lost: the task is submitted again
_LOST = (
    "WorkerCrashedError",
    "NodeDiedError",
    "LocalRayletDiedError",
    "ObjectLostError",
    "ObjectFetchTimedOutError",
    "OwnerDiedError",
    "TaskUnschedulableError",
)


def train_parallel(
    model: DCM,
    plan: Plan,
    study: Study,
    config: TrainConfig | None = None,
    on_event: Callable[[dict], None] = lambda e: None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    pretrained: Mapping[str, Any] | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    retries: int = 3,
    gpu_fraction: float = GPU_FRACTION,
    on_lost: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` along ``plan`` like :func:`mdcm.train.train`, the independent stages at
    the same time on Ray workers (see the module docstring).

    ``workers=N`` starts a local Ray instance with N worker slots; ``address`` joins an existing
    cluster; neither uses this process's Ray connection. ``on_event`` receives each event as a
    JSON dict (:meth:`mdcm.train.Event.to_json` plus ``time``; a task's first event carries
    ``worker`` = {node, host, pid}; the scheduler adds ``retry`` events). ``retries``: how often
    a stage whose worker was lost is submitted again. The same seeds give the same weights as
    :func:`mdcm.train.train` on the same device. The model stays on the CPU in this process.

    A cluster whose head goes away ends the run with :class:`ClusterLostError` (the checkpoint
    folder is up to date). Should this process be stuck inside a Ray call then, a watchdog calls
    ``on_lost(message)`` after LOST_GRACE_S, before Ray ends the process on its own: the command
    line records the run as failed there, says why, and exits."""
    from .train import TrainConfig

    cfg = config if config is not None else TrainConfig()
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ClusterError(f"retries must be a whole number >= 0, not {retries!r}")
    if not 0 < gpu_fraction <= 1:
        raise ClusterError(f"gpu_fraction must be in (0, 1], not {gpu_fraction!r}")
    with connect(workers, address) as info:
        driver = _Driver(
            model,
            plan,
            study,
            cfg,
            on_event,
            should_stop,
            Path(checkpoint_dir) if checkpoint_dir is not None else None,
            dict(pretrained or {}),
            info,
            retries,
            gpu_fraction,
            on_lost,
        )
        return driver.run(resume)


class _Driver:
    """One parallel run: the submission loop, the merged model and the checkpoint folder."""

    def __init__(
        self,
        model: DCM,
        plan: Plan,
        study: Study,
        cfg: TrainConfig,
        on_event: Callable[[dict], None],
        should_stop: Callable[[], bool],
        ckdir: Path | None,
        pretrained: dict[str, Any],
        info: ClusterInfo,
        retries: int,
        gpu_fraction: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        import ray

        self.ray = ray
        self.model, self.plan, self.study, self.cfg = model, plan, study, cfg
        self.on_event, self.should_stop = on_event, should_stop
        self.ckdir, self.pretrained, self.info = ckdir, pretrained, info
        self.retries, self.gpu_fraction = retries, gpu_fraction
        self.t0 = time.monotonic()
        self.index = {s.id: i for i, s in enumerate(plan.stages)}
        self.finished: dict[int, Any] = {}  # stage id -> StageSummary
        self.stage_ck: dict[int, Any] = {}  # stage id -> its last checkpoint
        self.running: dict[Any, _Job] = {}  # ObjectRef -> job
        self.heights = stage_heights(plan, {s.id: _work_estimate(s) for s in plan.stages})
        self.kinds = {v.name: v.kind for v in model.schema.variables}
        self.prepared = False
        self.channel: Any = None
        self.study_ref: Any = None
        self.pretrained_ref: Any = None
        self._model_ref: Any = None
        self._last_health = self._last_nodes = time.monotonic()
        self.on_lost = on_lost
        self._over = threading.Event()

    # -- events and checkpoints
    def emit(self, ev: dict) -> None:
        ev = dict(ev)
        ev["elapsed_s"] = round(time.monotonic() - self.t0, 3)
        ev.setdefault("time", time.time())
        self.on_event(ev)

    def _note(self, kind: str, stage: int, step: int, message: str) -> None:
        self.emit({"kind": kind, "stage": stage, "step": step, "message": message})

    def _plan_json(self) -> Any:
        return json.loads(json.dumps(self.plan.to_json()))

    def _stage_dir(self, sid: int) -> Path:
        assert self.ckdir is not None
        return self.ckdir / f"stage-{sid}"

    def _save(self) -> None:
        """The run's checkpoint: the model with every finished stage merged (then the finished
        stages' own checkpoints are removed)."""
        if self.ckdir is None:
            return
        from . import checkpoints

        done = [s.id for s in self.plan.stages if s.id in self.finished]
        prefix = next(
            (i for i, s in enumerate(self.plan.stages) if s.id not in self.finished), len(done)
        )
        tensors = {f"model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()}
        state = {
            "step": 0,
            "stage_index": prefix,
            "plan": self._plan_json(),
            "config": self.cfg.to_json(),
            "summaries": [self.finished[i].to_json() for i in done],
            "scheduler": {"format": 1, "finished": done, "prepared": self.prepared},
        }
        checkpoints.save(self.ckdir, tensors, {}, state)
        for sid in done:
            if self._stage_dir(sid).exists():
                shutil.rmtree(self._stage_dir(sid), ignore_errors=True)

    def _resume(self) -> None:
        """Read the checkpoint folder (a parallel or a sequential run's): the model, the
        finished stages and the last checkpoint of each unfinished one."""
        from . import checkpoints
        from .train import StageSummary, TrainingError

        if self.ckdir is None:
            raise TrainingError("resume=True needs a checkpoint_dir")
        try:
            ck = checkpoints.load(self.ckdir)
        except checkpoints.CheckpointError as exc:
            raise TrainingError(f"{exc}; start again without resume") from None
        if ck is None:
            return
        tensors, _, state = ck
        if state.get("plan") != self._plan_json():
            raise TrainingError(f"checkpoint in {self.ckdir} was made for another plan")
        prefix = "model."
        self.model.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        summaries = {s["stage"]: StageSummary.from_json(s) for s in state.get("summaries", [])}
        if state.get("scheduler"):
            done = list(state["scheduler"].get("finished", []))
            self.prepared = bool(state["scheduler"].get("prepared"))
        else:  # a sequential run's checkpoint: the first stage_index stages are finished
            si = int(state.get("stage_index", 0))
            done = [s.id for s in self.plan.stages[:si]]
            if state.get("step", 0) > 0 and si < len(self.plan.stages):
                self.stage_ck[self.plan.stages[si].id] = ck
        self.finished = {sid: summaries[sid] for sid in done if sid in summaries}
        for s in self.plan.stages:
            d = self._stage_dir(s.id)
            if s.id in self.finished or not (d / checkpoints.CKPT_STATE).exists():
                continue
            try:
                sck = checkpoints.load(d)
            except checkpoints.CheckpointError as exc:
                self._note("message", s.id, 0, f"stage {s.id} starts again: {exc}")
                continue
            if (
                sck is not None
                and sck[2].get("stage_index") == self.index[s.id]
                and sck[2].get("plan") == state["plan"]
            ):
                self.stage_ck[s.id] = sck

    # -- resources and submission
    def _resources(self, trains: Sequence[str]) -> Resources:
        return stage_resources(
            self.kinds, trains, self.cfg.device, self.info.gpus, self.gpu_fraction
        )

    def _check_resources(self, jobs: Mapping[str, Sequence[str]]) -> None:
        for what, trains in jobs.items():
            res = self._resources(trains)
            if not self.info.fits(res):
                raise ClusterError(
                    f"{what} (trains {', '.join(trains)}) asks for {res.describe()}, but no node "
                    f"of {self.info.describe()} has that"
                    + ("; train with device cpu or auto" if res.gpus and not self.info.gpus else "")
                )

    def _model(self) -> Any:
        """The model as trained so far, in the object store (put again after each merge)."""
        if self._model_ref is None:
            self._model_ref = self.ray.put(self.model)
        return self._model_ref

    def _submit(self, job: _Job) -> None:
        common = {"num_cpus": job.resources.cpus, "num_gpus": job.resources.gpus}
        if job.stage is None:
            task = self.ray.remote(_prepare_job).options(
                max_retries=0, name="mdcm prepare", **common
            )
            ref = task.remote(
                self.channel,
                self._model(),
                self.plan,
                self.study_ref,
                self.cfg,
                self.pretrained_ref,
            )
        else:
            task = self.ray.remote(_stage_job).options(
                max_retries=0, name=f"mdcm stage {job.stage}", **common
            )
            ref = task.remote(
                self.channel,
                self._model(),
                self.plan,
                self.study_ref,
                job.stage,
                self.cfg,
                self.stage_ck.get(job.stage),
                self.pretrained_ref,
            )
        self.running[ref] = job
        what = "the preparation" if job.stage is None else f"stage {job.stage}"
        self._note(
            "submit",
            -1 if job.stage is None else job.stage,
            0,
            f"{what} submitted (attempt {job.attempt}), asks for {job.resources.describe()}",
        )

    def _fill(self) -> None:
        """Submit the ready stages, highest remaining chain of work first, while the cluster has
        a CPU free for them."""
        if not self.prepared:
            return
        busy = {j.stage for j in self.running.values()}
        ready = sorted(
            (
                s
                for s in self.plan.stages
                if s.id not in self.finished
                and s.id not in busy
                and all(d in self.finished for d in s.depends_on)
            ),
            key=lambda s: (-self.heights[s.id], self.index[s.id]),
        )
        slots = max(1, int(self.info.cpus)) - len(self.running)
        for s in ready[: max(0, slots)]:
            self._submit(_Job(f"stage-{s.id}", s.id, 1, self._resources(s.trains)))

    # -- the loop
    def run(self, resume: bool) -> TrainResult:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .train import TrainResult

        ray = self.ray
        self.model.cpu()
        if resume:
            self._resume()
        elif self.ckdir is not None:  # a new run: no stage checkpoint of an older one survives
            for d in self.ckdir.glob("stage-*"):
                shutil.rmtree(d, ignore_errors=True)
        self._check_resources(
            {f"stage {s.id}": s.trains for s in self.plan.stages if s.id not in self.finished}
        )
        images = tuple(self.model.coders)
        if not (self.model.coders or self.model.scales):
            self.prepared = True
        if not self.prepared:
            self._check_resources({"the preparation": images})
        self.study_ref = ray.put(self.study)
        self.pretrained_ref = ray.put(self.pretrained) if self.pretrained else None
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.channel = (
            ray.remote(_Channel)
            .options(num_cpus=0, max_restarts=0, scheduling_strategy=here)
            .remote()
        )
        warm = ray.remote(_warm).options(num_cpus=1, max_retries=0)
        for _ in range(max(1, int(self.info.cpus))):
            warm.remote()
        ray.get(self.channel.drain.remote())  # the channel is up before any task needs it
        stopped = False
        if self.on_lost is not None and not self.info.local:
            threading.Thread(target=self._watch, daemon=True, name="mdcm-cluster-watch").start()
        try:
            if not self.prepared:
                self._submit(_Job("prepare", None, 1, self._resources(images)))
            self._fill()
            stopped = self._loop()
        except BaseException:
            self._cancel_all()
            raise
        finally:
            self._over.set()
            with contextlib.suppress(Exception):
                self._save()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        summaries = [self.finished[s.id] for s in self.plan.stages if s.id in self.finished]
        qs = [s.quality for s in summaries if s.quality is not None]
        self.emit(
            {
                "kind": "done",
                "stage": self.plan.stages[-1].id if self.plan.stages else -1,
                "step": 0,
                "losses": {},
                "quality": max(qs) if qs else None,
                "message": "stopped" if stopped else "finished",
            }
        )
        return TrainResult(
            summaries, f"ray: {self.info.describe()}", time.monotonic() - self.t0, stopped
        )

    def _loop(self) -> bool:
        """Wait for tasks and submit new ones until every stage is finished (False) or a stop
        request ended the run (True)."""
        ray = self.ray
        stop_sent = False
        while self.running:
            if not stop_sent and self.should_stop():
                stop_sent = True
                ray.get(self.channel.request_stop.remote(), timeout=30)
            self._pump()
            done, _ = ray.wait(list(self.running), num_returns=1, timeout=_POLL_S)
            if done:
                self._pump()  # the task's last events and checkpoint came before its result
            for ref in done:
                self._finish(ref, self.running.pop(ref))
            if not stop_sent:
                self._fill()
        return stop_sent or len(self.finished) < len(self.plan.stages)

    def _pump(self) -> None:
        """Hand the workers' events to ``on_event`` and save their checkpoints; every
        HEALTH_EVERY_S check that the cluster's head is still there (and what it offers)."""
        try:
            items = self.ray.get(self.channel.drain.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the channel's node gone, a timeout, ...
            self._check_alive(exc)
            raise
        for kind, key, payload in items:
            sid = int(key.split("-")[1]) if key.startswith("stage-") else None
            if kind == "event":
                if payload.get("kind") == "checkpoint" and sid is not None and self.ckdir:
                    payload = dict(payload, message=str(self._stage_dir(sid)))
                self.emit(payload)
            elif kind == "checkpoint" and sid is not None and sid not in self.finished:
                self.stage_ck[sid] = payload
                if self.ckdir is not None:
                    from . import checkpoints

                    checkpoints.save(self._stage_dir(sid), *payload)
        if time.monotonic() - self._last_health >= HEALTH_EVERY_S:
            self._last_health = time.monotonic()
            self._check_alive(None)
            if self._last_health - self._last_nodes >= 10 * HEALTH_EVERY_S:  # joined or left
                self._last_nodes = self._last_health
                self.info = _cluster_info(self.ray, self.info.address, self.info.local)

    def _lost_message(self, why: str = "") -> str:
        running = sorted(j.stage for j in self.running.values() if j.stage is not None)
        tail = (
            f"; stage(s) {', '.join(map(str, running))} go on from their last checkpoint"
            if running
            else ""
        )
        return (
            f"lost {self.info.describe()}: its head at {self.info.gcs_address} does not "
            f"answer{why}; {len(self.finished)} of {len(self.plan.stages)} stages are finished "
            f"and saved{tail} when the run is resumed"
        )

    def _check_alive(self, exc: BaseException | None) -> None:
        """ClusterLostError when the cluster's head (GCS) no longer answers."""
        if _reachable(self.info.gcs_address) or _reachable(self.info.gcs_address, 5.0):
            return
        raise ClusterLostError(self._lost_message(f" ({type(exc).__name__})" if exc else ""))

    def _watch(self) -> None:
        """The watchdog thread: ``on_lost`` once the head has been silent for LOST_GRACE_S."""
        silent_since: float | None = None
        while not self._over.wait(HEALTH_EVERY_S):
            if _reachable(self.info.gcs_address):
                silent_since = None
                continue
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= LOST_GRACE_S and self.on_lost is not None:
                self.on_lost(self._lost_message())
                return

    def _get(self, ref: Any, what: str) -> Any:
        """A task's result; its TrainingError as a TrainingError, a lost worker as
        :class:`_WorkerLost`, a lost cluster as :class:`ClusterLostError`."""
        from .train import TrainingError

        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except TrainingError as exc:  # raised inside the task (RayTaskError subclasses it)
            raise TrainingError(str(getattr(exc, "cause", exc))) from None
        except exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        except exceptions.RayError as exc:
            self._check_alive(exc)
            if type(exc).__name__ in _LOST:
                raise _WorkerLost(_first_line(exc)) from None
            raise ClusterError(f"{what} failed on the cluster: {_first_line(exc)}") from None

    def _finish(self, ref: Any, job: _Job) -> None:
        from .train import StageSummary

        what = (
            "the preparation (data scales, image codes)"
            if job.stage is None
            else f"stage {job.stage}"
        )
        try:
            result = self._get(ref, what)
        except _WorkerLost as exc:
            self._retry(job, what, str(exc))
            return
        if job.stage is None:
            done, state = result
            if done:  # else: stopped during a coder fit (it stays unfitted)
                self.model.load_state_dict(state, strict=False)
                self._model_ref = None
                self.prepared = True
                self._save()
            return
        summary = StageSummary.from_json(result[0])
        if summary.stopped_by == "stop":
            return  # its checkpoint at the stop came through the channel
        self.model.load_state_dict(result[1], strict=False)
        self._model_ref = None
        self.finished[job.stage] = summary
        self.stage_ck.pop(job.stage, None)
        self._save()
        if self.ckdir is not None:
            self._note("checkpoint", job.stage, summary.steps, str(self.ckdir))

    def _retry(self, job: _Job, what: str, why: str) -> None:
        """Submit a job whose worker was lost again, from its stage's last checkpoint."""
        if job.attempt > self.retries:
            raise ClusterError(f"{what} lost its worker {job.attempt} times (last: {why})")
        ck = self.stage_ck.get(job.stage) if job.stage is not None else None
        step = int(ck[2].get("step", 0)) if ck is not None else 0
        self._note(
            "retry",
            -1 if job.stage is None else job.stage,
            step,
            f"{what}: its worker was lost ({why[:160]}); training it again from step {step} "
            f"(attempt {job.attempt + 1} of {self.retries + 1})",
        )
        self._submit(_Job(job.key, job.stage, job.attempt + 1, job.resources))

    def _cancel_all(self) -> None:
        for ref in list(self.running):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self.running.clear()
