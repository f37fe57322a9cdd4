"""``mdcm`` / ``python -m mdcm``: the command line, for headless use on a GPU server.

Subcommands::

    mdcm plan --graph "C -> X -> N; C <-> N" [--intervention X ...] [--joint] [--json]
    mdcm identify --graph "..." --treatment X --outcome Y [--given Z] [--intervention W] [--json]
    mdcm identify --graph "..." --outcome Y[=y] --do X=x [--evidence V=v ...] [--json]   (ID*/IDC*)
    mdcm train (--study DIR | --example NAME) --out MODEL_DIR [--plan modular|joint] [--steps N] ...
               [--pretrained X=MODEL_DIR ...]   (X's plain-conditional stage from another model)
    mdcm train --run-dir RUN [--resume]          (a background run made by mdcm.runs.start_run)
    mdcm sample --model MODEL_DIR [--do X=1 ...] [--given Z=0 ...] -n N --out DIR [--seed S]
    mdcm sample --model MODEL_DIR --do X=1 -n N --as-dataset DIR   (a dataset of regime do(X=1))
    mdcm counterfactual --model MODEL_DIR --evidence V=v ... --do X=x ... -n N --out DIR [--seed S]
    mdcm check --model MODEL_DIR (--study DIR | --example NAME [--size S]) [--json]
    mdcm export-example NAME --out DIR [--size cpu|64|128|256|gpu] [--n N] [--seed S]
    mdcm runs list|show RUN|stop RUN|resume RUN [--root DIR]

Bad input never prints a traceback: one line ``mdcm: error: <message>`` on stderr and exit
status 2. ``plan`` and ``identify`` import neither torch nor pandas, so they answer at once; every
heavy import happens inside the command that needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["CliError", "build_parser", "main"]

PROG = "mdcm"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: = mdcm.examples.SIZES (not imported here, so that plan and identify stay light)
EXAMPLE_SIZES = ("cpu", "64", "128", "256", "gpu")


class CliError(Exception):
    """A usage or input problem: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage + exiting, so errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message)


# ---------------------------------------------------------------------- small parsers
def _sets(values: Sequence[str] | None, what: str) -> list[frozenset[str]]:
    """Each value is a comma-separated set of variable names ("X,W"), one regime per value."""
    out: list[frozenset[str]] = []
    for raw in values or ():
        names = [p.strip() for p in raw.split(",")]
        if not all(names):
            raise CliError(f"bad {what} {raw!r}: expected comma-separated variable names")
        out.append(frozenset(names))
    return out


def _names(values: Sequence[str] | None, what: str) -> list[str]:
    """Union of comma-separated name lists given once or several times."""
    out: list[str] = []
    for s in _sets(values, what):
        out.extend(sorted(s - set(out)))
    return out


def _check_known(graph: Any, names: Sequence[str] | frozenset[str], what: str) -> None:
    for v in sorted(names):
        if v not in graph.nodes:
            raise CliError(
                f"unknown variable {v!r} in {what}; the graph has {', '.join(graph.nodes)}"
            )


def _graph_arg(text: str) -> Any:
    from .graph import parse_graph

    if text.startswith("@"):  # --graph @file.txt reads the graph text from a file
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(
                f"cannot read graph file {text[1:]!r}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    graph = parse_graph(text)
    if not graph.nodes:
        raise CliError("the graph is empty: give at least one variable")
    return graph


def _assignments(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    """Parse repeated ``NAME=VALUE`` options (also comma-free lists "X=1" per option)."""
    out: dict[str, str] = {}
    for raw in values or ():
        name, sep, value = raw.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise CliError(f"bad {flag} {raw!r}: expected NAME=VALUE, e.g. {flag} X=1")
        if name in out:
            raise CliError(f"{flag} sets {name!r} twice")
        out[name] = value
    return out


# ---------------------------------------------------------------------- plan / identify
def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import make_plan

    graph = _graph_arg(args.graph)
    regimes = _sets(args.intervention, "--intervention")
    for r in regimes:
        _check_known(graph, r, "--intervention")
    plan = make_plan(graph, regimes, joint=args.joint)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2, sort_keys=True))
    else:
        print(plan.describe(technical=args.technical))
    return EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    if args.do or args.evidence:
        return _identify_counterfactual(args)
    if not args.treatment:
        raise CliError(
            "give --treatment X for P(Y | do(X)), or --do X=x [--evidence V=v] for a counterfactual"
        )
    from .identify import identify

    graph = _graph_arg(args.graph)
    treatment = _names(args.treatment, "--treatment")
    outcome = _names(args.outcome, "--outcome")
    given = _names(args.given, "--given")
    regimes = _sets(args.intervention, "--intervention")
    for what, names in (("--treatment", treatment), ("--outcome", outcome), ("--given", given)):
        _check_known(graph, names, what)
    for r in regimes:
        _check_known(graph, r, "--intervention")
    result = identify(graph, treatment, outcome, given=given, interventions=regimes)
    payload = result.to_json()
    if args.json:
        out = {k: payload.get(k) for k in ("identifiable", "estimand", "reason")}
        out.update({k: v for k, v in payload.items() if k not in out})
        print(json.dumps(out, indent=2, sort_keys=True))
        return EXIT_OK
    query = f"P({', '.join(outcome)} | do({', '.join(treatment)})" + (
        f", {', '.join(given)})" if given else ")"
    )
    data = "P(V)" + "".join(f", P(V | do({', '.join(sorted(r))}))" for r in regimes)
    if payload.get("identifiable"):
        print(f"{query} is identifiable from {data}.")
        if payload.get("estimand"):
            print(f"  estimand: {payload['estimand']}")
    else:
        print(f"{query} is NOT identifiable from {data}.")
        print(
            "  A trained model will still answer it, but its answer is one of many that fit "
            "the data."
        )
    if payload.get("reason"):
        print(f"  reason: {payload['reason']}")
    return EXIT_OK


def _class_values(values: Sequence[str] | None, flag: str) -> dict[str, int]:
    """``NAME=CLASS`` options with integer classes (a graph alone has no kinds)."""
    out: dict[str, int] = {}
    for k, v in _assignments(values, flag).items():
        try:
            out[k] = int(v)
        except ValueError:
            raise CliError(f"bad {flag} {k}={v}: give a class index 0, 1, …") from None
        if out[k] < 0:
            raise CliError(f"bad {flag} {k}={v}: give a class index 0, 1, …")
    return out


def _identify_counterfactual(args: argparse.Namespace) -> int:
    """``identify --do X=x [--evidence V=v]``: the ID*/IDC* verdict for P(Y_{do} | evidence)."""
    from .identify import identify_counterfactual

    if args.treatment or args.given:
        raise CliError(
            "--do/--evidence ask a counterfactual; --treatment/--given an interventional "
            "query: use one form"
        )
    if not args.do:
        raise CliError("--evidence needs --do X=x (the world the outcome is asked about)")
    graph = _graph_arg(args.graph)
    outcome: dict[str, int | None] = {}
    for raw in args.outcome:
        for part in raw.split(","):
            name, sep, value = (x.strip() for x in part.partition("="))
            if not name or (sep and not value):
                raise CliError(f"bad --outcome {raw!r}: expected Y or Y=value")
            outcome[name] = _class_values([f"{name}={value}"], "--outcome")[name] if sep else None
    do = _class_values(args.do, "--do")
    evidence = _class_values(args.evidence, "--evidence")
    classes = _class_values(args.classes, "--classes") or None
    regimes = _sets(args.intervention, "--intervention")
    for what, names in (("--outcome", outcome), ("--do", do), ("--evidence", evidence)):
        _check_known(graph, list(names), what)
    for r in regimes:
        _check_known(graph, r, "--intervention")
    result = identify_counterfactual(graph, outcome, do, evidence, regimes, classes=classes)
    payload = result.to_json()
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
        return EXIT_OK
    data = "P(V)" + "".join(f", P(V | do({', '.join(sorted(r))}))" for r in regimes)
    if result.identifiable:
        print(f"{result.query} is identifiable from {data}.")
        print(f"  estimand: {result.estimand}")
    else:
        print(f"{result.query} is NOT identifiable from {data}.")
        print(
            "  A trained model will still answer it, but the number "
            + (
                "depends on how the model couples the noise across the two worlds."
                if result.cross_world
                else "is one of many that fit the data."
            )
        )
    print(f"  reason: {result.reason}")
    return EXIT_OK


# ---------------------------------------------------------------------- train
_TRAIN_FLAGS = {  # TrainConfig field -> argparse dest
    "steps": "steps",
    "batch_size": "batch_size",
    "objective": "objective",
    "seed": "seed",
    "device": "device",
    "time_limit_s": "time_limit",
    "check_every": "check_every",
    "tolerance": "tolerance",
    "checkpoint_every": "checkpoint_every",
}


class _Progress:
    """A per-stage progress bar fed by training events (tqdm if installed, else a \\r line)."""

    def __init__(self, enabled: bool, steps: int | None):
        self.enabled = enabled
        self.steps = steps
        self.bar: Any = None
        self.stage = None
        self._last_line = 0.0

    def __call__(self, ev: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        kind, stage, step = ev.get("kind"), ev.get("stage"), int(ev.get("step") or 0)
        if kind == "stage_start" or (kind == "step" and stage != self.stage):
            self._open(stage)
        if self.bar is not None and kind in ("step", "check", "stage_end"):
            self.bar.n = step
            post = {
                k: f"{v:.3g}"
                for k, v in (ev.get("losses") or {}).items()
                if isinstance(v, int | float)
            }
            if ev.get("quality") is not None:
                post["fit"] = f"{ev['quality']:.3f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
        elif self.bar is None and kind == "step" and time.monotonic() - self._last_line > 0.2:
            self._last_line = time.monotonic()
            print(f"\rstage {stage} step {step}", end="", file=sys.stderr, flush=True)
        if kind in ("stage_end", "done", "error"):
            self.close()
        if kind in ("check", "stage_end") and ev.get("message"):
            print(f"stage {stage}: {ev['message']}", file=sys.stderr)

    def _open(self, stage: Any) -> None:
        self.close()
        self.stage = stage
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=self.steps, desc=f"stage {stage}", file=sys.stderr, dynamic_ncols=True, leave=True
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _study_from_config(cfg: Mapping[str, Any]) -> Any:
    if cfg.get("example"):
        from .examples import load_example

        ex = cfg["example"]
        return load_example(
            ex["name"], size=ex.get("size", "cpu"), n=ex.get("n"), seed=int(ex.get("seed", 0))
        ).study
    from .data import load_study

    return load_study(Path(cfg["study_dir"]))


def _train_config(values: Mapping[str, Any]) -> Any:
    import dataclasses

    from .train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise CliError(f"this trainer has no setting {', '.join(unknown)}")
    try:
        return TrainConfig(**{k: v for k, v in values.items() if v is not None})
    except TypeError as exc:  # a wrongly typed --set value
        raise CliError(f"bad training setting: {exc}") from None


def _model_config(model_cfg: Any) -> Any:
    from .model import ModelConfig

    image_net = model_cfg.get("image_net", "auto") if isinstance(model_cfg, dict) else None
    try:
        return ModelConfig(image_net=image_net)
    except ValueError as exc:
        raise CliError(f"run config: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from . import runs

    recorder = runs.RunRecorder(args.run_dir) if args.run_dir else None
    given = {
        k: getattr(args, dest)
        for k, dest in _TRAIN_FLAGS.items()
        if getattr(args, dest) is not None
    }
    for key, text in _assignments(args.set, "--set").items():
        if key in given:
            raise CliError(f"--set {key}: use the --{key.replace('_', '-')} option instead")
        try:
            given[key] = json.loads(text)
        except json.JSONDecodeError:
            given[key] = text
    new_cfg = None
    if not (recorder is not None and not (args.study or args.example)):
        if bool(args.study) == bool(args.example):
            raise CliError("give exactly one of --study DIR and --example NAME")
        new_cfg = {"plan": args.plan, "train": given}
        if args.image_net:
            new_cfg["model"] = {"image_net": args.image_net}
        if args.example:
            new_cfg["example"] = {
                "name": args.example,
                "size": args.size,
                "n": args.n,
                "seed": args.data_seed,
            }
        else:
            new_cfg["study_dir"] = str(Path(args.study).resolve())
        new_cfg.update(_pretrained_arg(args.pretrained))
    elif args.pretrained:
        raise CliError("--pretrained: an existing run keeps its mechanism sources; start a new run")
    if recorder is not None:
        cfg = runs.attach_run(
            recorder.run_dir,
            new_cfg,
            resume=bool(args.resume),
            train_overrides=given,
            image_net=args.image_net,
        )
    else:
        assert new_cfg is not None
        cfg = new_cfg
    if cfg.get("plan", "modular") not in ("modular", "joint"):
        raise CliError(f"unknown plan {cfg.get('plan')!r}; use modular or joint")
    out = Path(args.out) if args.out else (recorder.model_dir if recorder else None)
    if out is None:
        raise CliError("give --out MODEL_DIR (where the trained model is saved)")
    ckpt = (
        Path(args.checkpoint_dir)
        if args.checkpoint_dir
        else (recorder.checkpoint_dir if recorder else None)
    )
    if args.resume and ckpt is None:
        raise CliError("--resume needs --run-dir or --checkpoint-dir")

    if recorder is None:
        with _StopSignals() as signals:
            return _train(args, cfg, out, ckpt, None, signals)
    with recorder.training(_one_line), _StopSignals() as signals:
        return _train(args, cfg, out, ckpt, recorder, signals)


class _StopSignals:
    """SIGTERM or a first Ctrl-C asks training to stop cleanly after the current step (with a
    checkpoint); a second Ctrl-C aborts. Handlers are restored on exit (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self.loading = False  # while the data loads, a stop request interrupts the load
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        import signal

        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.loading:
            raise _StoppedWhileLoading
        print("\nstopping after the current step (Ctrl-C again to abort)", file=sys.stderr)

    def load(self, cfg: Mapping[str, Any], recorder: Any) -> Any:
        """The study of ``cfg``, or None when a stop request (a signal, or the run's stop flag,
        watched from a thread) came while it loaded: a large study takes minutes to read or
        draw, and a stop must not wait for that."""
        import _thread
        import signal
        import threading

        done = threading.Event()

        def watch() -> None:  # the flag file has no signal: ask the main thread's handler
            while not done.wait(0.2):
                if recorder.should_stop():
                    _thread.interrupt_main(signal.SIGTERM)
                    return

        self.loading = True
        try:
            if self._old and recorder is not None:
                threading.Thread(target=watch, daemon=True, name="mdcm-stop-watch").start()
            if self.requested:
                return None
            return _study_from_config(cfg)
        except _StoppedWhileLoading:
            return None
        finally:
            self.loading = False
            done.set()

    def __enter__(self) -> _StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


class _StoppedWhileLoading(Exception):
    """A stop request arrived while the study was loading (see :meth:`_StopSignals.load`)."""


def _train(
    args: argparse.Namespace,
    cfg: dict,
    out: Path,
    ckpt: Path | None,
    recorder: Any,
    signals: _StopSignals,
) -> int:
    cluster = _cluster_choice(args, cfg, recorder)  # a bad cluster fails before the data load
    study = signals.load(cfg, recorder)  # bad data fails before torch is imported
    if study is None:
        message = "stopped while loading the data; resume to start training"
        if recorder is not None:
            recorder.finish("stopped", message)
        print(message, file=sys.stderr)
        return EXIT_OK

    from .model import DCM, save_model
    from .plan import make_plan
    from .train import train

    graph = study.schema.graph
    plan = make_plan(graph, list(study.interventions), joint=cfg.get("plan") == "joint")
    tconf = _train_config(cfg.get("train", {}))
    import torch

    torch.manual_seed(tconf.seed)  # initial weights follow the seed too
    model = DCM(study.schema, _model_config(cfg.get("model", {})))
    donors = _pretrained_mechanisms(cfg, study.schema, plan, model.config)
    show = args.progress == "on" or (args.progress == "auto" and recorder is None)
    progress = _Progress(show, tconf.steps)

    def on_event(event: Any) -> None:
        ev = event.to_json()
        if recorder is not None:
            recorder.on_event(ev)
        progress(ev)

    def should_stop() -> bool:
        return signals.requested or (recorder is not None and recorder.should_stop())

    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    if not show and recorder is None:
        print(f"training {len(plan.stages)} stage(s) ...", file=sys.stderr)
    if cluster:
        result = _train_on_ray(
            cluster, (model, plan, study, tconf), recorder, show, should_stop, ckpt, args, donors
        )
    else:
        result = train(
            model,
            plan,
            study,
            tconf,
            on_event=on_event,
            should_stop=should_stop,
            checkpoint_dir=ckpt,
            resume=bool(args.resume),
            pretrained=donors,
        )
    progress.close()
    stopped = result.stopped
    extra = {
        "train_config": cfg.get("train", {}),
        "source": {k: cfg[k] for k in ("example", "study_dir") if k in cfg},
        "complete": not stopped,
        "pretrained": cfg.get("pretrained", {}),
        "tolerance": tconf.tolerance,
        "stages": [st.to_json() for st in result.stages],  # fits per regime (regime warnings)
        "regimes": [sorted(r) for r in study.interventions],
    }
    if stopped and recorder is not None:
        recorder.finish("stopped", "stopped on request; resume to continue")
        print(
            f"stopped; resume with: mdcm runs resume {recorder.run_dir.name} "
            f"--root {recorder.run_dir.parent}",
            file=sys.stderr,
        )
        return EXIT_OK
    if stopped and ckpt is not None:
        print(
            f"stopped; continue with the same command plus --resume --checkpoint-dir {ckpt}",
            file=sys.stderr,
        )
        return EXIT_OK
    if stopped:
        print(
            "stopped early: the saved model is INCOMPLETE (use --checkpoint-dir to be able "
            "to resume)",
            file=sys.stderr,
        )
    path = save_model(model, out, plan=plan, extra=extra)
    if recorder is not None:
        recorder.on_event(
            {"kind": "saved", "stage": -1, "step": 0, "elapsed_s": 0.0, "message": str(path)}
        )
        recorder.finish("done", "")
    for st in result.stages:
        fits = ", ".join(
            f"{label} {'-' if q is None else format(q, '.3f')}" for label, q in st.fits.items()
        )
        print(
            f"stage {st.stage} ({', '.join(st.trains)}): {st.steps} steps, {st.seconds:.1f} s, "
            f"fit {fits or '-'} (noise floor {st.floor:.3f}), ended by {st.stopped_by}",
            file=sys.stderr,
        )
    print(f"model saved to {path}{' (stopped early)' if stopped else ''}")
    return EXIT_OK


# ---------------------------------------------------------------------- train on Ray
def _cluster_choice(args: argparse.Namespace, cfg: Mapping[str, Any], recorder: Any) -> dict:
    """Where to train (mdcm.scheduler.cluster_settings): --workers / --ray-address, else the
    run's recorded setting, else $MDCM_RAY_ADDRESS, else {} (one process). Flags given to a run
    folder are recorded there, so ``mdcm runs resume`` trains the same way. An address is
    probed at once (an unreachable cluster fails in seconds, before any data is read)."""
    from . import scheduler

    cluster = scheduler.cluster_settings(args.workers, args.ray_address)
    if cluster and recorder is not None:
        from .runs import set_run_cluster

        set_run_cluster(recorder.run_dir, args.workers, args.ray_address)
    if not cluster:
        cluster = scheduler.recorded_cluster(cfg)
    if not cluster and os.environ.get(scheduler.ADDRESS_ENV):
        cluster = scheduler.cluster_settings(None, os.environ[scheduler.ADDRESS_ENV])
    if "address" in cluster:
        scheduler.probe(cluster["address"])
    return cluster


class _StageLines:
    """Progress of stages that train at the same time: a line when a stage starts, ends or is
    retried, and one status line of every running stage's step."""

    def __init__(self, enabled: bool, steps: int) -> None:
        self.enabled, self.steps = enabled, steps
        self.at: dict[int, int] = {}
        self._last = 0.0
        self._status = False  # a status line is on the screen (ends without a newline)

    def __call__(self, ev: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        kind, stage = ev.get("kind"), ev.get("stage")
        if kind == "stage_start":
            self.at[stage] = 0
            w = ev.get("worker") or {}
            where = f" on {w.get('host')} (node {w.get('node')}, pid {w.get('pid')})" if w else ""
            self._print(f"stage {stage} started{where}")
        elif kind in ("stage_end", "retry", "error") or (kind == "coder" and ev.get("message")):
            self.at.pop(stage, None)
            self._print(f"stage {stage}: {ev.get('message', '')}" if stage >= 0 else ev["message"])
        elif kind in ("step", "check") and stage in self.at:
            self.at[stage] = int(ev.get("step") or 0)
            if time.monotonic() - self._last > 0.5:
                self._last = time.monotonic()
                line = " | ".join(f"stage {s} {n}/{self.steps}" for s, n in sorted(self.at.items()))
                print(f"\r{line[:150]}", end="", file=sys.stderr, flush=True)
                self._status = True

    def _print(self, text: str) -> None:
        print(("\n" if self._status else "") + text, file=sys.stderr, flush=True)
        self._status = False


def _train_on_ray(
    cluster: Mapping[str, Any],
    job: tuple[Any, Any, Any, Any],
    recorder: Any,
    show: bool,
    should_stop: Callable[[], bool],
    ckpt: Path | None,
    args: argparse.Namespace,
    donors: Mapping[str, Any],
) -> Any:
    """:func:`mdcm.scheduler.train_parallel` for ``mdcm train --workers/--ray-address``; a lost
    cluster's message says how to resume this run."""
    from .scheduler import ClusterLostError, train_parallel

    model, plan, study, tconf = job
    lines = _StageLines(show, tconf.steps)
    if recorder is not None:
        how = f"mdcm runs resume {recorder.run_dir.name} --root {recorder.run_dir.parent}"
    elif ckpt is not None:
        how = f"the same command plus --resume --checkpoint-dir {ckpt}"
    else:
        how = "nothing (no checkpoint folder was given)"

    def on_lost(message: str) -> None:  # stuck in a Ray call: record, say why, leave now
        text = f"{message}; resume with: {how}"
        if recorder is not None:
            recorder.on_event({"kind": "error", "stage": -1, "step": 0, "message": text})
            recorder.finish("failed", text)
        print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)
        os._exit(EXIT_USAGE)

    def on_event(ev: dict) -> None:
        if recorder is not None:
            recorder.on_event(ev)
        lines(ev)

    try:
        return train_parallel(
            model,
            plan,
            study,
            tconf,
            on_event,
            should_stop,
            ckpt,
            bool(args.resume),
            donors,
            workers=cluster.get("workers"),
            address=cluster.get("address"),
            on_lost=on_lost,
        )
    except ClusterLostError as exc:
        raise ClusterLostError(f"{exc}; resume with: {how}") from None


def _pretrained_arg(values: Sequence[str] | None) -> dict:
    """``--pretrained X=MODEL_DIR`` (repeatable) as the run config's ``pretrained`` entry:
    variable -> the donor model folder and, when it is a run's model, that run's id."""
    out: dict[str, dict] = {}
    for var, folder in _assignments(values, "--pretrained").items():
        path = Path(folder).resolve()
        if not (path / "model.json").is_file():
            raise CliError(f"--pretrained {var}={folder}: no model.json there (not a model folder)")
        run = path.parent.name if (path.parent / "run.json").is_file() else None
        out[var] = {"model": str(path), "run": run}
    return {"pretrained": out} if out else {}


def _pretrained_mechanisms(cfg: Mapping[str, Any], schema: Any, plan: Any, config: Any) -> dict:
    """The donor models named by the run config's ``pretrained`` entry, each checked to fill a
    stage whose target is the plain conditional P(V | pa(V)) (mdcm.bundle)."""
    from .bundle import fillable_stages, load_pretrained

    sources = {
        v: Path(src["model"] if isinstance(src, Mapping) else src)
        for v, src in (cfg.get("pretrained") or {}).items()
    }
    fillable = fillable_stages(plan)
    for v in sources:
        if v not in schema.names:
            raise CliError(
                f"--pretrained {v}: unknown variable; the study has {', '.join(schema.names)}"
            )
        if v not in fillable:
            stage = plan.stage_of(v)
            raise CliError(
                f"--pretrained {v}: stage {stage.id} trains {', '.join(stage.trains)}; only a "
                f"stage that learns the plain conditional P({v} | its parents) alone can take "
                "a pre-trained mechanism"
            )
    return load_pretrained(sources, schema, config)


# ---------------------------------------------------------------------- sample
def _image_value(path_text: str, var: Any) -> Any:
    from .readers import read_png

    return read_png(Path(path_text), where=f"--do {var.name}", expect=tuple(var.shape))


def _value(var: Any, text: str, flag: str) -> Any:
    """Convert ``text`` to a value of variable ``var`` (categorical int, continuous floats,
    image: a PNG path)."""
    if var.kind == "categorical":
        try:
            v = int(text)
        except ValueError:
            raise CliError(
                f"bad {flag} {var.name}={text}: {var.name} is categorical, "
                f"give a class 0..{var.classes - 1}"
            ) from None
        if not 0 <= v < var.classes:
            raise CliError(f"bad {flag} {var.name}={text}: class out of range 0..{var.classes - 1}")
        return v
    if var.kind == "continuous":
        try:
            vals = [float(p) for p in text.split(",")]
        except ValueError:
            raise CliError(
                f"bad {flag} {var.name}={text}: {var.name} is continuous, "
                f"give {var.shape[0]} number(s)"
            ) from None
        if len(vals) != var.shape[0] or not all(abs(x) < float("inf") for x in vals):
            raise CliError(
                f"bad {flag} {var.name}={text}: expected {var.shape[0]} finite "
                "number(s), comma-separated"
            )
        return vals[0] if len(vals) == 1 else vals
    if flag != "--do":
        raise CliError(f"{flag} {var.name}: conditioning on an image is not supported")
    return _image_value(text, var)


def _schema_var(schema: Any, name: str, flag: str) -> Any:
    if name not in schema.names:
        raise CliError(
            f"{flag}: unknown variable {name!r}; the model has {', '.join(schema.names)}"
        )
    return schema[name]


def _model_dir_and_n(args: argparse.Namespace) -> Path:
    """``--model`` as an existing folder, after checking ``-n`` (1 … 1000000)."""
    if args.n < 1 or args.n > 1_000_000:
        raise CliError(f"-n {args.n}: give a sample count between 1 and 1000000")
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise CliError(f"--model {args.model}: no such model folder")
    return model_dir


def cmd_sample(args: argparse.Namespace) -> int:
    model_dir = _model_dir_and_n(args)
    do_text = _assignments(args.do, "--do")
    given_text = _assignments(args.given, "--given")
    both = set(do_text) & set(given_text)
    if both:
        raise CliError(f"{', '.join(sorted(both))} is both intervened on and conditioned on")
    _check_as_dataset(args, given_text)
    from .model import load_model

    model = load_model(model_dir)
    schema = model.schema
    do = {k: _value(_schema_var(schema, k, "--do"), v, "--do") for k, v in do_text.items()}
    given = {
        k: _value(_schema_var(schema, k, "--given"), v, "--given") for k, v in given_text.items()
    }
    for k in given:
        if schema[k].kind != "categorical":
            raise CliError(f"--given {k}: only categorical variables can be conditioned on")
    columns = _draw(model, args.n, do, given, args.seed)
    from .query import regime_fit_warning

    rest = [v for v in model.order if v not in do and v not in given]
    warning = regime_fit_warning(
        model, list(do), rest, list(given), model.record.get("regimes", ())
    )
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.out:
        csv_path = _write_samples(schema, columns, Path(args.out), do, given, do_text)
        print(f"wrote {args.n} samples to {csv_path}")
    if args.as_dataset:
        _sample_as_dataset(schema, columns, do, Path(args.as_dataset))
    return EXIT_OK


def _check_as_dataset(args: argparse.Namespace, given: Mapping[str, str]) -> None:
    """``--as-dataset`` is for samples of one regime do(...): refused before any sampling when
    they would be conditioned (``--given``) or the folder exists."""
    if not args.out and not args.as_dataset:
        raise CliError("give --out DIR, --as-dataset DIR or both")
    if not args.as_dataset:
        return
    if given:
        raise CliError(
            "--as-dataset: samples conditioned with --given are not samples of one regime "
            "do(...) (a dataset would be read as P(V | do(...))); drop --given"
        )
    if Path(args.as_dataset).exists():
        raise CliError(f"--as-dataset {args.as_dataset}: already exists; pick a new folder")


def _sample_as_dataset(schema: Any, columns: Mapping[str, Any], do: Mapping, out: Path) -> None:
    from .bundle import export_samples

    ds = export_samples(schema, columns, do, out)
    shown = {k: ("an image" if schema[k].kind == "image" else v) for k, v in do.items()}
    regime = "observational" if not do else f"do({', '.join(f'{k}={v}' for k, v in shown.items())})"
    print(f"wrote dataset {out} ({ds.n} rows, {regime}); read it with mdcm.load_study")


def _draw(
    model: Any, n: int, do: Mapping[str, Any], given: Mapping[str, int], seed: int
) -> dict[str, Any]:
    """``n`` samples of the model under ``do``; with ``given``, by rejection: keep the rows
    whose categorical values equal ``given`` (P(v | do(x), z) = P(v, z | do(x)) / P(z | do(x)))."""
    import numpy as np
    import torch

    def to_np(cols: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {
            k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in cols.items()
        }

    if not given:
        return to_np(model.sample(n, do=do or None, seed=seed))
    kept: list[dict[str, np.ndarray]] = []
    have, drawn, batch, rnd = 0, 0, max(1024, 4 * n), 0
    while have < n:
        cols = to_np(model.sample(batch, do=do or None, seed=seed + rnd))
        rnd += 1
        drawn += batch
        mask = np.ones(batch, dtype=bool)
        for k, v in given.items():
            mask &= cols[k].reshape(batch) == v
        if mask.any():
            kept.append({k: c[mask] for k, c in cols.items()})
            have += int(mask.sum())
        if have < n and drawn >= 200 * n + 100_000:
            rate = have / drawn
            cond = ", ".join(f"{k}={v}" for k, v in given.items())
            raise CliError(
                f"--given {cond} is too rare under the model: {have} of {drawn} "
                f"samples matched (rate {rate:.2g}); ask for fewer samples"
            )
    return {k: np.concatenate([b[k] for b in kept])[:n] for k in kept[0]}


def _write_samples(
    schema: Any,
    columns: Mapping[str, Any],
    out: Path,
    do: Mapping[str, Any],
    given: Mapping[str, Any],
    do_text: Mapping[str, str],
) -> Path:
    """Write the samples as a dataset folder with data.csv's conventions (one column per
    variable, ``V[i]`` columns for vectors, image columns holding PNG paths relative to the
    folder), named ``samples.csv``; ``sample.json`` records the query."""
    import shutil

    from .data import Dataset, save_dataset

    out.mkdir(parents=True, exist_ok=True)
    do_json: dict[str, Any] = {}
    for k, v in do.items():
        if schema[k].kind == "image":  # keep a copy of the intervention image
            rel = f"do_{k}.png"
            shutil.copyfile(do_text[k], out / rel)
            do_json[k] = rel
        else:
            do_json[k] = v
    ds = Dataset(name=out.name or "samples", columns=dict(columns), do={})
    save_dataset(ds, schema, out)
    os.replace(out / "data.csv", out / "samples.csv")
    meta = {"do": do_json, "given": dict(given), "n": ds.n}
    (out / "sample.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    return out / "samples.csv"


# ---------------------------------------------------------------------- counterfactual
def cmd_counterfactual(args: argparse.Namespace) -> int:
    """Units of the twin network (mdcm.counterfactual): factual values matching --evidence,
    counterfactual values under --do, the same noise in both worlds."""
    model_dir = _model_dir_and_n(args)
    do_text = _assignments(args.do, "--do")
    ev_text = _assignments(args.evidence, "--evidence")
    if not do_text:
        raise CliError("give at least one --do X=VALUE (the counterfactual world)")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CliError(f"--out {args.out}: exists and is not empty; pick a new folder")
    from .counterfactual import counterfactual_samples
    from .model import load_model

    model = load_model(model_dir)
    schema = model.schema
    do = {k: _value(_schema_var(schema, k, "--do"), v, "--do") for k, v in do_text.items()}
    evidence = {
        k: _value(_schema_var(schema, k, "--evidence"), v, "--evidence") for k, v in ev_text.items()
    }
    samples = counterfactual_samples(model, evidence, do, args.n, args.seed)
    summary = _counterfactual_summary(model, samples, do_text)
    _write_twin_samples(schema, samples, out, do, do_text)
    from .files import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    ev = ", ".join(f"{k}={v}" for k, v in evidence.items()) or "no evidence"
    print(
        f"wrote {samples.n} units ({ev}; acceptance {samples.acceptance_rate:.1%}) to "
        f"{out / 'samples.csv'}"
    )
    for info in summary["outcomes"].values():
        verdict = "identifiable" if info["identifiable"] else "NOT identifiable"
        shown = info.get("counterfactual")
        print(f"  {info['query']}: {verdict}" + (f"; model {shown}" if shown else ""))
    return EXIT_OK


def _counterfactual_summary(model: Any, samples: Any, do_text: Mapping[str, str]) -> dict:
    """summary.json: the query, acceptance, and per outcome variable the verdict (ID*/IDC*) and,
    for categorical ones, both worlds' distributions among the accepted units."""
    import numpy as np

    from .counterfactual import counterfactual_identification

    regimes = model.record.get("regimes", ())
    interventions = [list(r) for r in regimes if r]
    outcomes = {}
    for y in model.order:
        if y in samples.do:
            continue
        ident = counterfactual_identification(model, y, samples.do, samples.evidence, interventions)
        info: dict[str, Any] = {"query": ident.query, **ident.to_json()}
        var = model.schema[y]
        if var.kind == "categorical":
            for world, vals in (
                ("factual", samples.factual),
                ("counterfactual", samples.counterfactual),
            ):
                p = np.bincount(vals[y].numpy(), minlength=var.classes) / max(samples.n, 1)
                info[world] = [round(float(x), 4) for x in p]
        outcomes[y] = info
    return {
        "evidence": samples.evidence,
        "do": {
            k: (do_text[k] if model.schema[k].kind == "image" else v) for k, v in samples.do.items()
        },
        "n": samples.n,
        "drawn": samples.drawn,
        "acceptance_rate": samples.acceptance_rate,
        "outcomes": outcomes,
        "note": "each row is one unit: the factual.V columns and the V columns share every "
        "exogenous noise; non-identifiable answers depend on the model's noise coupling",
    }


def _write_twin_samples(
    schema: Any, samples: Any, out: Path, do: Mapping[str, Any], do_text: Mapping[str, str]
) -> Path:
    """DIR/samples.csv: the counterfactual world's columns (data.csv conventions, images under
    images/) and the factual world's as ``factual.<column>`` (images under factual/images/)."""
    import csv
    import io
    import shutil

    from .data import DATA_FILE, Dataset, save_dataset
    from .files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    for k in do:
        if schema[k].kind == "image":  # keep a copy of the intervention image
            shutil.copyfile(do_text[k], out / f"do_{k}.png")
    worlds = (("", samples.counterfactual, out), ("factual.", samples.factual, out / "factual"))
    tables = []
    for prefix, cols, folder in worlds:
        columns = {k: v.numpy() for k, v in cols.items()}
        save_dataset(Dataset(name="samples", columns=columns, do={}), schema, folder)
        with open(folder / DATA_FILE, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        (folder / DATA_FILE).unlink()
        images = {
            i for i, c in enumerate(rows[0]) if c in schema.names and schema[c].kind == "image"
        }
        head = [prefix + c for c in rows[0]]
        body = [
            [("factual/" + x if prefix and i in images else x) for i, x in enumerate(r)]
            for r in rows[1:]
        ]
        tables.append((head, body))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(tables[0][0] + tables[1][0])
    w.writerows(a + b for a, b in zip(tables[0][1], tables[1][1], strict=True))
    atomic_write(out / "samples.csv", buf.getvalue())
    return out / "samples.csv"


# ---------------------------------------------------------------------- check (image fidelity)
def cmd_check(args: argparse.Namespace) -> int:
    """Image fidelity of a trained model against a study (mdcm.fidelity): per image variable,
    probe agreement, Fréchet distance and sharpness, each next to its real-vs-real floor."""
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise CliError(f"--model {args.model}: no such model folder")
    if bool(args.study) == bool(args.example):
        raise CliError("give exactly one of --study DIR and --example NAME")
    if args.example:
        source = {"example": {"name": args.example, "size": args.size, "n": args.n, "seed": 0}}
    else:
        source = {"study_dir": str(Path(args.study))}
    study = _study_from_config(source)
    from .fidelity import format_report, model_fidelity
    from .model import load_model

    model = load_model(model_dir, expect_schema=study.schema)
    images = model.schema.of_kind("image")
    if not images:
        raise CliError(f"--model {args.model}: the model has no image variable to check")
    unknown = [v for v in args.variable or () if v not in images]
    if unknown:
        raise CliError(f"--variable {unknown[0]}: not an image variable ({', '.join(images)})")
    if study.observational is None:
        raise CliError("the study has no observational dataset to compare the images with")
    results = model_fidelity(
        model, study, variables=args.variable or None, n=args.images, seed=args.seed
    )
    if args.json:
        print(json.dumps({v: r.to_json() for v, r in results.items()}, indent=1))
    else:
        print("\n\n".join(format_report(r) for r in results.values()))
    return EXIT_OK


# ---------------------------------------------------------------------- export-example
def cmd_export_example(args: argparse.Namespace) -> int:
    from .examples import EXAMPLES, export_example

    if args.name not in EXAMPLES:
        raise CliError(f"unknown example {args.name!r}; choose one of {', '.join(EXAMPLES)}")
    if args.n is not None and args.n < 1:
        raise CliError(f"--n {args.n}: give a positive number of rows")
    path = export_example(args.name, Path(args.out), size=args.size, n=args.n, seed=args.seed)
    print(f"wrote example {args.name!r} to {path}")
    return EXIT_OK


# ---------------------------------------------------------------------- runs
def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_runs(args: argparse.Namespace) -> int:
    from . import runs

    root = Path(args.root) if args.root else runs.default_root()
    if args.action == "list":
        infos, skipped = runs.scan_runs(root)
        if args.json:
            print(
                json.dumps(
                    {
                        "runs": [r.to_json() for r in infos],
                        "skipped": [{"folder": f, "reason": r} for f, r in skipped],
                    },
                    indent=2,
                    default=str,
                )
            )
            return EXIT_OK
        if not infos:
            print(f"no runs in {root}")
        for r in infos:
            src = (
                r.config.get("example", {}).get("name")
                if r.config.get("example")
                else r.config.get("study_dir", "?")
            )
            last = r.last_progress or {}
            print(
                f"{r.run_id}  {r.status:<11}  {_fmt_time(r.created)}  {src}  "
                f"stage {last.get('stage', '-')} step {last.get('step', '-')}"
            )
        for _folder, reason in skipped:
            print(f"skipped: {reason}", file=sys.stderr)
        return EXIT_OK
    if not args.run:
        raise CliError(f"runs {args.action} needs a RUN id")
    path = runs.run_path(root, args.run)
    if not path.is_dir():
        raise CliError(f"no run {args.run!r} in {root}")
    if args.action == "show":
        info = runs.run_status(path)
        if args.json:
            d = info.to_json()
            d["events"] = runs.read_events(path)
            print(json.dumps(d, indent=2, default=str))
            return EXIT_OK
        print(f"run {info.run_id}: {info.status} (attempt {info.attempts})")
        print(f"  folder:  {info.path}")
        print(f"  created: {_fmt_time(info.created)}   finished: {_fmt_time(info.finished)}")
        print(f"  config:  {json.dumps(info.config, sort_keys=True)}")
        if info.message:
            print(f"  message: {info.message}")
        for ev in runs.read_events(path)[-args.tail :]:
            print(
                f"  [{ev.get('kind')}] stage {ev.get('stage')} step {ev.get('step')} "
                + " ".join(
                    f"{k}={v:.4g}"
                    for k, v in (ev.get("losses") or {}).items()
                    if isinstance(v, int | float)
                )
                + (
                    f" fit={ev['quality']:.4g}"
                    if isinstance(ev.get("quality"), int | float)
                    else ""
                )
                + (f" {ev['message']}" if ev.get("message") else "")
            )
        return EXIT_OK
    if args.action == "stop":
        info = runs.stop_run(path)
        print(f"asked run {info.run_id} to stop (status {info.status})")
        return EXIT_OK
    info = runs.resume_run(path)
    print(f"resumed run {info.run_id} (attempt {info.attempts})")
    return EXIT_OK


# ---------------------------------------------------------------------- parser and main
def _int_in(lo: int, hi: int | None, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi] (hi None = unbounded)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _int_in(1, None, "a positive number")
_nonneg_int = _int_in(0, 2**32 - 1, "a number 0..2^32-1")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Modular deep causal generative models (Rahman & Kocaoglu, ICML 2024).",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sp = sub.add_parser("plan", help="the modular training plan for a causal graph")
    sp.add_argument("--graph", required=True, help='e.g. "C -> X -> N; C <-> N" (or @file)')
    sp.add_argument(
        "--intervention",
        action="append",
        metavar="X[,W]",
        help="an interventional dataset's intervened set (repeatable)",
    )
    sp.add_argument("--joint", action="store_true", help="the one-stage joint (NCM) baseline")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument(
        "--technical",
        action="store_true",
        help="the stages in the paper's terms (matched sets, do-parents, R1-R3)",
    )
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("identify", help="is P(outcome | do(treatment)[, given]) identifiable?")
    sp.add_argument("--graph", required=True)
    sp.add_argument("--treatment", action="append", metavar="X[,X2]")
    sp.add_argument("--outcome", action="append", required=True, metavar="Y[,Y2]")
    sp.add_argument("--given", action="append", metavar="Z[,Z2]")
    sp.add_argument(
        "--do",
        action="append",
        metavar="X=x",
        help="counterfactual form (ID*/IDC*): the outcome in the world do(X=x) (repeatable)",
    )
    sp.add_argument(
        "--evidence",
        action="append",
        metavar="V=v",
        help="counterfactual form: a value observed in the factual world (repeatable)",
    )
    sp.add_argument(
        "--classes",
        action="append",
        metavar="V=K",
        help="counterfactual form: V has K classes (checks every outcome value; a binary "
        "treatment can identify the effect on the treated)",
    )
    sp.add_argument(
        "--intervention",
        action="append",
        metavar="W[,W2]",
        help="an available interventional dataset's intervened set (repeatable)",
    )
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_identify)

    sp = sub.add_parser("train", help="train a model on a study folder or a built-in example")
    src = sp.add_argument_group("data")
    src.add_argument("--study", metavar="DIR", help="a study folder (study.json + datasets)")
    src.add_argument("--example", metavar="NAME", help="a built-in example")
    src.add_argument(
        "--size", choices=EXAMPLE_SIZES, default="cpu", help="example size (image side in px)"
    )
    src.add_argument("--n", type=_positive_int, help="example rows")
    src.add_argument("--data-seed", type=_nonneg_int, default=0, help="example data seed")
    sp.add_argument(
        "--out",
        metavar="MODEL_DIR",
        help="where to save the model (default with --run-dir: RUN/model)",
    )
    sp.add_argument("--plan", choices=("modular", "joint"), default="modular")
    sp.add_argument("--device", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--steps", type=_positive_int, help="max steps per stage")
    sp.add_argument("--batch-size", type=_positive_int)
    sp.add_argument("--seed", type=_nonneg_int)
    sp.add_argument(
        "--time-limit", type=_positive_float, metavar="SEC", help="time limit per stage (seconds)"
    )
    sp.add_argument("--objective", choices=("auto", "wgan", "mmd"))
    sp.add_argument(
        "--image-net",
        choices=("auto", "latent", "mlp", "conv"),
        help="image mechanisms: latent (default: a mixture over the image "
        "autoencoder's code) or pixel generators trained with WGAN-GP (mlp, "
        "conv; sharper with a GPU and time)",
    )
    sp.add_argument("--check-every", type=_positive_int)
    sp.add_argument("--checkpoint-every", type=_positive_int)
    sp.add_argument("--tolerance", type=_positive_float)
    sp.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other TrainConfig field, e.g. --set coder_steps=100 (repeatable)",
    )
    sp.add_argument(
        "--pretrained",
        action="append",
        metavar="X=MODEL_DIR",
        help="fill X's stage (a plain conditional P(X | parents)) with X's mechanism from "
        "another trained model instead of training it (repeatable)",
    )
    sp.add_argument("--run-dir", metavar="RUN", help="record progress in this run folder")
    sp.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoints (default RUN/checkpoint)")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    sp.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    sp.add_argument(
        "--workers",
        type=_int_in(1, 4096, "a number of workers of at least 1"),
        metavar="N",
        help="train independent stages at the same time on N local Ray workers",
    )
    sp.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="train on a running Ray cluster: HOST:PORT of its head, ray://HOST:10001 or auto "
        "(default: $MDCM_RAY_ADDRESS)",
    )
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("sample", help="sample a trained model, optionally under do(...)")
    sp.add_argument("--model", required=True, metavar="MODEL_DIR")
    sp.add_argument(
        "--do",
        action="append",
        metavar="X=VALUE",
        help="intervention (repeatable); an image takes a PNG path",
    )
    sp.add_argument(
        "--given",
        action="append",
        metavar="Z=VALUE",
        help="condition on a categorical value (rejection sampling)",
    )
    sp.add_argument("-n", type=_positive_int, required=True, help="number of samples")
    sp.add_argument("--out", metavar="DIR", help="the samples (samples.csv, PNGs, sample.json)")
    sp.add_argument(
        "--as-dataset",
        metavar="DIR",
        help="also (or instead) write them as a new dataset folder with intervention.json "
        "and study.json, which mdcm.data.load_study reads back as the regime do(...)",
    )
    sp.add_argument("--seed", type=_nonneg_int, default=0)
    sp.set_defaults(func=cmd_sample)

    sp = sub.add_parser(
        "counterfactual",
        help="units in two worlds: factual values matching --evidence, counterfactual ones "
        "under --do (the same noise)",
    )
    sp.add_argument("--model", required=True, metavar="MODEL_DIR")
    sp.add_argument(
        "--evidence",
        action="append",
        metavar="V=VALUE",
        help="a categorical value observed in the factual world (repeatable; rejection)",
    )
    sp.add_argument(
        "--do",
        action="append",
        metavar="X=VALUE",
        help="the counterfactual intervention (repeatable); an image takes a PNG path",
    )
    sp.add_argument("-n", type=_positive_int, required=True, help="number of accepted units")
    sp.add_argument(
        "--out", required=True, metavar="DIR", help="samples.csv, PNGs of both worlds, summary.json"
    )
    sp.add_argument("--seed", type=_nonneg_int, default=0)
    sp.set_defaults(func=cmd_counterfactual)

    sp = sub.add_parser(
        "check", help="image fidelity of a trained model: probe agreement, Fréchet, sharpness"
    )
    sp.add_argument("--model", required=True, metavar="MODEL_DIR")
    sp.add_argument("--study", metavar="DIR", help="the study folder the model was trained on")
    sp.add_argument("--example", metavar="NAME", help="or a built-in example (with --size, --n)")
    sp.add_argument("--size", choices=EXAMPLE_SIZES, default="cpu", help="example size")
    sp.add_argument("--n", type=_positive_int, help="example rows")
    sp.add_argument("--variable", action="append", metavar="IMAGE", help="only this image")
    sp.add_argument(
        "--images",
        type=_int_in(20, 100_000, "a number 20..100000"),
        default=1000,
        help="generated images (and held-out real ones per half) compared; default 1000",
    )
    sp.add_argument("--seed", type=_nonneg_int, default=0)
    sp.add_argument("--json", action="store_true", help="print the figures as JSON")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("export-example", help="write a built-in example as a study folder")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument(
        "--size",
        choices=EXAMPLE_SIZES,
        default="cpu",
        help="cpu: small images (14/16 px); 64, 128, 256: that side in px; gpu: 28 px",
    )
    sp.add_argument("--n", type=_positive_int)
    sp.add_argument("--seed", type=_nonneg_int, default=0)
    sp.set_defaults(func=cmd_export_example)

    sp = sub.add_parser("runs", help="list, show, stop or resume background training runs")
    sp.add_argument("action", choices=("list", "show", "stop", "resume"))
    sp.add_argument("run", nargs="?", metavar="RUN")
    sp.add_argument(
        "--root", metavar="DIR", help="runs folder (default $MDCM_HOME/runs or ./.mdcm/runs)"
    )
    sp.add_argument("--tail", type=_positive_int, default=10, help="events shown by 'show'")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_runs)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg[:1000]


def _user_errors() -> tuple[type[BaseException], ...]:
    """The documented input-error types, from whichever modules are already imported (an error
    of a module can only be raised once it is imported, so nothing heavy is imported here)."""
    names = {
        "mdcm.graph": "GraphError",
        "mdcm.variables": "SchemaError",
        "mdcm.plan": "PlanError",
        "mdcm.identify": "IdentificationError",
        "mdcm.query": "QueryError",
        "mdcm.limits": "DataError",
        "mdcm.model": "ModelFileError",
        "mdcm.train": "TrainingError",
        "mdcm.runs": "RunError",
    }
    out: list[type[BaseException]] = [CliError, OSError, ValueError]
    for mod, name in names.items():
        cls = getattr(sys.modules.get(mod), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            out.append(cls)
    return tuple(out)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except CliError as exc:
        return _fail(_one_line(exc))
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        return EXIT_OK
    except _user_errors() as exc:
        if isinstance(exc, OSError) and exc.strerror:
            where = f": {exc.filename}" if exc.filename else ""
            return _fail(f"{exc.strerror}{where}")
        return _fail(_one_line(exc))
    except Exception as exc:  # a bug, not bad input: still one line, but say so
        if os.environ.get("MDCM_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(exc).__name__}: {_one_line(exc)}); "
            "set MDCM_DEBUG=1 for a traceback",
            EXIT_INTERNAL,
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
