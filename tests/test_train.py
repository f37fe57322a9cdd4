"""Stage-wise training (mdcm/train.py): fast smoke and behaviour tests.

Oracles: the data's own frequency tables (the fit), bit-identical weights between an
uninterrupted run and a stopped-and-resumed run, and file bytes around a failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mdcm.train as train_mod
from mdcm.checkpoints import CKPT_STATE, CKPT_WEIGHTS
from mdcm.data import Dataset, Study
from mdcm.examples import load_example
from mdcm.model import DCM, ModelConfig
from mdcm.plan import joint_plan, make_plan
from mdcm.query import tvd
from mdcm.train import TrainConfig, TrainingError, pick_device, train

SMALL = ModelConfig(
    noise_dim=4,
    image_noise_dim=8,
    confounder_dim=3,
    hidden=32,
    image_hidden=64,
    image_channels=8,
    code_dim=4,
)
FAST = TrainConfig(
    steps=12,
    batch_size=16,
    mmd_batch=64,
    check_every=5,
    check_samples=256,
    coder_steps=20,
    log_every=5,
    tolerance=0.0,
)


def xray(n: int = 300):
    return load_example("xray", n=n, seed=0)


def fresh(study, config: ModelConfig = SMALL, seed: int = 0) -> DCM:
    torch.manual_seed(seed)
    return DCM(study.schema, config)


def test_image_study_events_and_summaries() -> None:
    ex = xray()
    m = fresh(ex.study)
    events = []
    res = train(m, make_plan(ex.study.graph), ex.study, FAST, on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done"
    assert kinds.count("stage_start") == 2 and kinds.count("stage_end") == 2
    assert "check" in kinds and "step" in kinds
    assert [s.trains for s in res.stages] == [("X",), ("C", "N")]
    assert [s.objective for s in res.stages] == ["mle", "mmd"]  # "auto" with latent images
    assert all(s.steps == 12 and s.stopped_by == "steps" for s in res.stages)
    assert all(s.quality is not None and 0.0 <= s.quality <= 1.0 for s in res.stages)
    checks = [e for e in events if e.kind == "check"]
    assert all(np.isfinite(list(e.losses.values())).all() for e in checks)
    assert all(e.to_json()["kind"] == e.kind for e in events)
    out = m.sample(8, {"C": 1}, seed=0)
    assert out["X"].shape == (8, 1, 16, 16) and not any(p.requires_grad for p in m.parameters())


def test_continuous_variable_and_interventional_regime() -> None:
    ex = load_example("backdoor", n=400, seed=0)
    cols, _ = ex.sample(300, {"X": 1}, seed=5)
    study = Study(ex.study.schema, ex.study.datasets + (Dataset("do_X", cols, {"X": 1}),))
    plan = make_plan(study.graph, study.interventions)
    m = fresh(study)
    res = train(m, plan, study, FAST)
    assert sum(s.steps for s in res.stages) == 12 * len(plan.stages)
    z = m.sample(50, seed=0)["Z"]
    assert z.shape == (50, 1) and torch.isfinite(z).all()


def test_discrete_fit_reaches_the_data() -> None:
    """A confounded pair (bow graph): MMD training matches the joint P(X, Y) of the data."""
    ex = load_example("bow", n=3000, seed=0)
    m = fresh(ex.study)
    cfg = TrainConfig(
        steps=300,
        mmd_batch=128,
        check_every=25,
        tolerance=0.02,
        stable_checks=2,
        seed=1,
        check_samples=2000,
    )
    res = train(m, make_plan(ex.study.graph), ex.study, cfg)
    obs = ex.study.observational.columns
    data = np.bincount(obs["X"] * 2 + obs["Y"], minlength=4) / len(obs["X"])
    s = m.sample(20000, seed=2)
    model = np.bincount((s["X"] * 2 + s["Y"]).numpy(), minlength=4) / 20000
    assert tvd(model, data) < 0.04, (model, data, res)


def test_categorical_plain_conditionals_train_by_maximum_likelihood() -> None:
    """X -> Y, both 3-class: every stage is a plain conditional of a categorical mechanism, so
    "auto" fits it by maximum likelihood, and P(Y | do(X = x)) lands on the data's own
    conditional frequencies (the oracle: counts of the data)."""
    from mdcm.graph import CausalGraph
    from mdcm.nets import MLPGenerator, has_log_prob
    from mdcm.variables import Schema, Variable

    rng = np.random.default_rng(0)
    n = 3000
    x = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    table = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    y = np.array([rng.choice(3, p=table[v]) for v in x])
    schema = Schema(
        CausalGraph.parse("X -> Y"), tuple(Variable(v, "categorical", classes=3) for v in "XY")
    )
    study = Study(schema, (Dataset("observational", {"X": x, "Y": y}),))
    m = fresh(study)
    cfg = TrainConfig(steps=300, mmd_batch=128, check_every=50, check_samples=2000, seed=1)
    res = train(m, make_plan(study.graph), study, cfg)
    assert [s.objective for s in res.stages] == ["mle", "mle"]
    for v in range(3):
        data = np.bincount(y[x == v], minlength=3) / (x == v).sum()
        s = m.sample(20000, {"X": v}, seed=v)
        model = np.bincount(s["Y"].numpy(), minlength=3) / 20000
        # sampling error of the data's conditional (>= 600 rows): TVD about 0.02 at most
        assert tvd(model, data) < 0.03, (v, model, data)
    assert not has_log_prob(MLPGenerator(2, 2, 0, 1, 8, categorical=False))


def test_early_stop_and_time_limit() -> None:
    ex = load_example("bow", n=500, seed=0)
    plan = make_plan(ex.study.graph)
    res = train(
        fresh(ex.study),
        plan,
        ex.study,
        TrainConfig(
            steps=100,
            check_every=5,
            tolerance=1.0,
            stable_checks=2,
            check_samples=200,
            min_steps_confounded=0,
        ),
    )
    assert res.stages[0].stopped_by == "tolerance" and res.stages[0].steps == 10
    # the bow's stage trains X and Y joined by a hidden confounder: no early stop before
    # min_steps_confounded (its fit check cannot see how the shared noise is used)
    cfg = TrainConfig(
        steps=100,
        check_every=5,
        tolerance=1.0,
        stable_checks=2,
        check_samples=200,
        min_steps_confounded=25,
    )
    events = []
    res = train(fresh(ex.study), plan, ex.study, cfg, on_event=events.append)
    assert res.stages[0].stopped_by == "tolerance" and res.stages[0].steps == 25
    start = next(e.message for e in events if e.kind == "stage_start")
    assert "after step 25 at the earliest" in start, start
    res = train(fresh(ex.study), plan, ex.study, TrainConfig(steps=100, time_limit_s=0.0))
    assert res.stages[0].stopped_by == "time" and res.stages[0].steps == 0


def _state(m: DCM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_checkpoint_resume_is_deterministic(tmp_path) -> None:
    ex = xray(200)
    plan = make_plan(ex.study.graph)
    cfg = TrainConfig(
        steps=10,
        batch_size=16,
        mmd_batch=32,
        check_every=3,
        check_samples=128,
        coder_steps=10,
        checkpoint_every=4,
        seed=3,
    )
    ref = fresh(ex.study)
    ref_res = train(ref, plan, ex.study, cfg, checkpoint_dir=tmp_path / "a")
    # Interrupt in the middle of stage 0 (after 6 steps), then resume in a NEW process-like model.
    polls = {"n": 0}

    def stop() -> bool:  # polled once per coder-fit step too
        polls["n"] += 1
        return polls["n"] > 6 + cfg.coder_steps

    m = fresh(ex.study)
    res = train(m, plan, ex.study, cfg, should_stop=stop, checkpoint_dir=tmp_path / "b")
    assert res.stopped and res.stages[-1].stopped_by == "stop" and res.stages[-1].steps == 6
    assert (tmp_path / "b" / CKPT_STATE).exists()
    m2 = fresh(ex.study, seed=99)  # different init: everything must come back
    res2 = train(m2, plan, ex.study, cfg, checkpoint_dir=tmp_path / "b", resume=True)
    assert not res2.stopped and [s.steps for s in res2.stages] == [s.steps for s in ref_res.stages]
    assert ref_res.stages[0].steps == 10  # the interrupted stage ran to its step limit
    a, b = _state(ref), _state(m2)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # resuming a finished run does nothing more and keeps the weights
    m3 = fresh(ex.study, seed=5)
    res3 = train(m3, plan, ex.study, cfg, checkpoint_dir=tmp_path / "b", resume=True)
    assert len(res3.stages) == 2 and all(torch.equal(a[k], m3.state_dict()[k]) for k in a)


def test_nan_loss_raises_and_keeps_the_good_checkpoint(tmp_path, monkeypatch) -> None:
    ex = load_example("bow", n=300, seed=0)
    calls = {"n": 0}
    real_mmd = train_mod.mmd2

    def flaky(x, y):
        calls["n"] += 1
        out = real_mmd(x, y)
        return out * float("nan") if calls["n"] > 6 else out

    monkeypatch.setattr(train_mod, "mmd2", flaky)
    saved = {}

    def on_event(e):
        if e.kind == "checkpoint":
            saved["bytes"] = (tmp_path / CKPT_WEIGHTS).read_bytes()

    events = []
    with pytest.raises(TrainingError, match="diverged"):
        train(
            fresh(ex.study),
            make_plan(ex.study.graph),
            ex.study,
            TrainConfig(steps=20, checkpoint_every=4, check_every=100),
            on_event=lambda e: (on_event(e), events.append(e)),
            checkpoint_dir=tmp_path,
        )
    assert (tmp_path / CKPT_WEIGHTS).read_bytes() == saved["bytes"]
    assert events[-1].kind == "error" and "diverged" in events[-1].message


def test_oom_becomes_actionable_error(monkeypatch) -> None:
    ex = load_example("bow", n=100, seed=0)

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_mod._Trainer, "_gen_step", boom)
    with pytest.raises(TrainingError, match="smaller batch"):
        train(fresh(ex.study), make_plan(ex.study.graph), ex.study, TrainConfig(steps=3))


def test_pretrained_mechanism_fills_the_conditional_stage() -> None:
    """Front-door: train the image mechanism P(X | C) once, reuse it in a second model."""
    ex = xray()
    plan = make_plan(ex.study.graph)
    first = fresh(ex.study)
    train(first, plan, ex.study, FAST)
    second = fresh(ex.study, seed=7)
    res = train(second, plan, ex.study, FAST, pretrained={"X": first})
    assert res.stages[0].stopped_by == "pretrained" and res.stages[0].steps == 0
    assert res.stages[1].steps == 12
    a, b = first.generators["X"].state_dict(), second.generators["X"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the latent mechanism's codes mean something only with its coder: that came along too
    ca, cb = first.coders["X"].state_dict(), second.coders["X"].state_dict()
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert torch.equal(
        first.sample(16, {"C": 1}, seed=3)["X"], second.sample(16, {"C": 1}, seed=3)["X"]
    )
    # ...so a bare module cannot stand in for a latent mechanism
    with pytest.raises(TrainingError, match="latent"):
        train(fresh(ex.study), plan, ex.study, FAST, pretrained={"X": first.generators["X"]})
    # pixel mechanisms: a plain module works too; a mechanism of another shape does not
    pix = ModelConfig(**{**SMALL.to_json(), "image_net": "mlp"})
    donor = fresh(ex.study, pix)
    res = train(donor, plan, ex.study, FAST)
    assert [s.objective for s in res.stages] == ["wgan", "mmd"]
    third = fresh(ex.study, pix, seed=8)
    train(third, plan, ex.study, FAST, pretrained={"X": donor.generators["X"]})
    a = donor.generators["X"].state_dict()
    assert torch.equal(third.generators["X"].state_dict()["net.0.weight"], a["net.0.weight"])
    with pytest.raises(TrainingError, match="does not fit"):
        train(fresh(ex.study, pix), plan, ex.study, FAST, pretrained={"X": torch.nn.Linear(3, 3)})
    # a stage that is not a plain conditional cannot be pre-trained
    with pytest.raises(TrainingError, match="plain conditional"):
        train(fresh(ex.study), plan, ex.study, FAST, pretrained={"N": first})


def test_joint_plan_trains_through_the_same_code() -> None:
    ex = xray()
    # latent image mechanism inside a joint stage: not a plain conditional, so MMD, not MLE
    res = train(fresh(ex.study), joint_plan(ex.study.graph), ex.study, FAST)
    assert res.stages[0].objective == "mmd" and res.stages[0].steps == 12
    conv = ModelConfig(image_net="conv", image_channels=8, code_dim=4, hidden=16)
    res = train(fresh(ex.study, conv), joint_plan(ex.study.graph), ex.study, FAST)
    assert len(res.stages) == 1 and res.stages[0].trains == ("C", "X", "N")
    assert res.stages[0].objective == "wgan" and res.stages[0].steps == 12


def test_input_errors() -> None:
    ex = load_example("bow", n=100, seed=0)
    other = load_example("napkin", n=100, seed=0)
    with pytest.raises(TrainingError, match="another graph|does not fit"):
        train(fresh(ex.study), make_plan(other.study.graph), ex.study, FAST)
    with pytest.raises(TrainingError, match="does not fit the study"):
        train(fresh(other.study), make_plan(other.study.graph), ex.study, FAST)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(TrainingError, match="resume=True needs"):
        train(fresh(ex.study), make_plan(ex.study.graph), ex.study, FAST, resume=True)


def test_fit_checktable_tvd() -> None:
    from mdcm.fitcheck import table_tvd

    rng = np.random.default_rng(0)
    g = rng.integers(0, 2, 5000)
    a = rng.integers(0, 3, 5000)
    assert table_tvd([g, a], [g, a.copy()], 1) == 0.0
    zeros = np.zeros(5000, np.int64)
    assert table_tvd([g, zeros], [g, zeros + 1], 1) == pytest.approx(1.0)
    # a quarter of the rows moved from class 0 to class 1: TVD 0.25
    moved = zeros.copy()
    moved[:1250] = 1
    assert table_tvd([g, zeros], [g, moved], 1) == pytest.approx(0.25)


def test_config_and_event_json_round_trip() -> None:
    cfg = TrainConfig(steps=7, betas=(0.4, 0.8), objective="mmd")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="adam")
    e = train_mod.Event("check", 1, 20, 3.5, {"generator": 0.1}, 0.02, "ok")
    assert e.to_json() == {
        "kind": "check",
        "stage": 1,
        "step": 20,
        "elapsed_s": 3.5,
        "losses": {"generator": 0.1},
        "quality": 0.02,
        "message": "ok",
    }


def test_plateau_rule() -> None:
    from mdcm.fitcheck import plateau

    assert not plateau([0.5, 0.4, 0.3], 2)  # still improving
    assert plateau([0.5, 0.2, 0.3, 0.25], 2)  # no new best in the last 2 checks
    assert not plateau([0.5, 0.2, 0.3, 0.1], 2)
    assert not plateau([None, 0.3], 2)  # too few checks


def test_kernel_reads_the_image_where_the_trained_children_look() -> None:
    """The front-door's confounded stage (C, N with X's mechanism frozen) gets a reader of X
    for its trained child N: on real X-rays it separates the rows by N better than any single
    code dimension does, at unit variance like a one-hot label; the image's own stage (no
    trained child) gets none."""
    from dataclasses import replace

    def roc_auc_score(y: np.ndarray, score) -> float:  # Mann-Whitney U / (n1 n0)
        r = np.argsort(np.argsort(np.asarray(score))) + 1.0
        n1 = int(y.sum())
        return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1)))

    ex = load_example("xray", n=1500, seed=0)
    m = fresh(ex.study, replace(SMALL, code_dim=8))
    plan = make_plan(ex.study.graph)
    cfg = replace(FAST, coder_steps=400)
    train(m, plan, ex.study, cfg)
    dev = torch.device("cpu")
    data = train_mod._RegimeData(m, list(ex.study.datasets), dev)
    st0, st1 = plan.stages
    rng = np.random.RandomState(0)
    m1 = train_mod._Matcher(m, st1, st1.targets[0], data, "mmd", cfg, dev, rng)
    m0 = train_mod._Matcher(m, st0, st0.targets[0], data, "mle", cfg, dev, rng)
    assert list(m1.readers) == ["X"] and not m0.readers
    codes = data.codes("X")
    z = m1.readers["X"](codes).detach()
    assert z.shape == (1500, 2) and abs(float(z.var(0).sum()) - 1.0) < 1e-3
    n = data.cols["N"].argmax(1).numpy()
    best_dim = max(max(a, 1 - a) for a in (roc_auc_score(n, codes[:, j]) for j in range(8)))
    auc = roc_auc_score(n, z[:, 1])
    assert auc > max(0.7, best_dim + 0.05), (auc, best_dim)
    rows = data.rows(torch.arange(64), m1.rows)
    assert m1.flat(rows).shape[1] == 2 + 2 + 8 + 2  # C, N one-hot, X's code, X's reader
