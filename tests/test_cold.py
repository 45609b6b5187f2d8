"""COLD fusion: its equations checked by hand, its ablations, training in every setting,
the ``cold-paper`` preset, per-frame weights through predict/plot, corrupted-frame reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from avx.fuse.data import Batch, DataConfig, StreamInfo
from avx.fuse.evaluate import Perturbation, predict
from avx.fuse.methods import create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.methods.cold import ABLATIONS
from avx.fuse.tasks import Objective
from avx.fuse.train import TrainConfig, Trainer, train
from avx.store_schema import open_store
from avx.store_schema.writer import StreamSpec, StreamWriter
from tests.conftest import run_avx

STREAMS = ("audio/mfcc", "video/mobilenetv2")
SMALL = {"hidden": 8, "layers": 1, "dropout": 0.0}
INPUTS = {"audio/a": StreamInfo(5), "video/v": StreamInfo(7, modality="video")}


def _batch(task: TaskSpec, seed: int = 0) -> Batch:
    """Three samples of 6/6/4 frames; sample 1 has no video, sample 2's video stops at 3."""
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 6
    masks = {s: torch.ones(b, t, dtype=torch.bool) for s in INPUTS}
    masks["audio/a"][2, 4:] = False
    masks["video/v"][1] = False
    masks["video/v"][2, 3:] = False
    present = {"audio/a": torch.ones(b, dtype=torch.bool), "video/v": torch.tensor([True, False, True])}
    inputs = {s: torch.randn(b, t, i.dim, generator=g) * masks[s].unsqueeze(-1) for s, i in INPUTS.items()}
    if task.frame_level:
        targets = torch.randn(b, t, task.n_outputs, generator=g)
        target_mask = masks["audio/a"].clone()
        target_mask[0, 1] = False  # an unlabelled frame
    else:
        targets = torch.randint(0, task.n_outputs, (b,), generator=g)
        target_mask = torch.ones(b, dtype=torch.bool)
    return Batch(list("xyz"), np.arange(b), inputs, masks, present, targets, target_mask)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _sym_kl(d: list[float], s: list[float]) -> float:
    p, q = _softmax(np.asarray(d)), _softmax(np.asarray(s))
    return float((p * np.log(p / q)).sum() + (q * np.log(q / p)).sum())


@pytest.mark.parametrize(
    "task",
    [TaskSpec("multiclass", 3), TaskSpec("regression", 2, frame_level=True)],
    ids=["seq-class", "frame-reg"],
)
def test_losses_weights_and_fusion_match_the_equations_by_hand(task: TaskSpec) -> None:
    torch.manual_seed(0)
    model = create_method("cold", INPUTS, task, **SMALL, latent=4).eval()
    batch = _batch(task)
    out = model(batch)
    mu, lv = out.mu.detach().double().numpy(), out.logvar.detach().double().numpy()
    frame_logits = out.frame_logits.detach().double().numpy()
    streams = list(INPUTS)
    avail = np.stack([batch.masks[s].numpy() & batch.present[s].numpy()[:, None] for s in streams], -1)
    norms = np.sqrt(np.exp(lv).sum(-1))  # ||sigma|| from log-variances
    # Eq. 2 and Eq. 1 with h = mu at evaluation.
    w = norms * avail / np.maximum((norms * avail).sum(-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(out.fusion_weights.detach().numpy(), w, rtol=1e-5, atol=1e-6)
    assert (w[1, :, 1] == 0).all()  # the missing video weighs nothing
    fused = (w[..., None] * mu).sum(2)
    head_w, head_b = (p.detach().double().numpy() for p in (model.head.weight, model.head.bias))
    if task.frame_level:
        expected = fused @ head_w.T + head_b
    else:
        real = avail.any(-1)
        pooled = np.stack([fused[b][real[b]].mean(0) for b in range(3)])
        expected = pooled @ head_w.T + head_b
    np.testing.assert_allclose(out.logits.detach().numpy(), expected, rtol=1e-4, atol=1e-5)

    # Distances D, variance-norm vectors S, L_CO (Eqs. 5-6) and L_regu (Eq. 7), by loops.
    y = batch.targets.numpy()
    tm = batch.target_mask.numpy()
    dval, sval = {}, {}  # (sample, frame, stream) -> d_i, s_i
    for b in range(3):
        for i in range(6):
            for k in range(2):
                if not (avail[b, i, k] and (tm[b, i] if task.frame_level else tm[b])):
                    continue
                z = frame_logits[b, i, k]
                if task.kind == "multiclass":
                    dval[b, i, k] = float(np.log(np.exp(z).sum()) - z[y[b]])  # cross-entropy
                else:
                    dval[b, i, k] = float(((z - y[b, i]) ** 2).mean())  # squared error
                sval[b, i, k] = 1.0 / norms[b, i, k]

    def keys(b: int, k: int | None = None) -> list[tuple[int, int, int]]:
        return [key for key in dval if key[0] == b and (k is None or key[2] == k)]

    def co_of(ks: list[tuple[int, int, int]]) -> float:
        return _sym_kl([dval[x] for x in ks], [sval[x] for x in ks])

    intra = [np.mean([co_of(keys(b, k)) for b in range(3) if keys(b, k)]) for k in range(2)]
    both = [b for b in range(3) if {x[2] for x in keys(b)} == {0, 1}]
    assert both == [0, 2]  # sample 1 has no video: no crossmodal term
    cross = np.mean([co_of(keys(b)) for b in both])  # interleaved frame by frame
    kl = -0.5 * (1 + lv - mu**2 - np.exp(lv)).sum(-1)
    regu = sum(kl[..., k][avail[..., k]].mean() for k in range(2))
    co = model.co_losses(out, batch)
    np.testing.assert_allclose(co["intra"].detach().numpy(), intra, rtol=1e-4)
    np.testing.assert_allclose(co["cross"].item(), cross, rtol=1e-4)
    np.testing.assert_allclose(model.regulariser(out).item(), regu, rtol=1e-5)
    # Eq. 8 with the paper's lambdas.
    terms = model.loss(out, batch, Objective(task.kind, regression_loss="ccc+mse"))
    assert set(terms) == {"task", "unimodal", "co_intra", "co_cross", "regu"}
    np.testing.assert_allclose(terms["co_intra"].item(), 1e-3 * sum(intra), rtol=1e-4)
    np.testing.assert_allclose(terms["co_cross"].item(), 1e-3 * cross, rtol=1e-4)
    np.testing.assert_allclose(terms["regu"].item(), 1e-4 * regu, rtol=1e-5)
    # Uncertainty is reported as S = 1/||sigma|| per frame (0 where absent).
    np.testing.assert_allclose(
        out.uncertainty["video/v"].detach().numpy(), np.where(avail[..., 1], 1 / norms[..., 1], 0), rtol=1e-5
    )


def test_ablation_flags_drop_the_paper_table_8_terms() -> None:
    task = TaskSpec("multiclass", 3)
    batch = _batch(task)
    expected = {
        "none": {"co_intra", "co_cross", "regu"},
        "no-intra": {"co_cross", "regu"},
        "no-cross": {"co_intra", "regu"},
        "no-regu": {"co_intra", "co_cross"},
        "no-constraints": set(),
    }
    assert set(expected) == set(ABLATIONS)
    for ablation, kept in expected.items():
        model = create_method("cold", INPUTS, task, **SMALL, ablation=ablation)
        terms = model.loss(model(batch), batch, Objective("multiclass"))
        assert set(terms) - {"task", "unimodal"} == kept, ablation
    per = create_method("cold", INPUTS, task, **SMALL, lambda_intra={"video": 0.5})
    assert per.lambdas["intra"] == [0.0, 0.5]
    with pytest.raises(Exception, match="unknown ablation"):
        create_method("cold", INPUTS, task, ablation="no-everything")
    with pytest.raises(Exception, match="names no selected stream"):
        create_method("cold", INPUTS, task, lambda_intra={"text": 1.0})


def test_calibration_loss_makes_variance_norms_follow_the_errors() -> None:
    """Minimising L_CO alone over the variance layer matches softmax(1/||sigma||) to
    softmax(D): the frame with the largest error gets the smallest ||sigma||."""
    torch.manual_seed(0)
    task = TaskSpec("regression", 1, frame_level=True)
    model = create_method("cold", INPUTS, task, hidden=8, layers=1, dropout=0.0).eval()
    g = torch.Generator().manual_seed(1)
    b, t = 4, 12
    batch = Batch(
        list("abcd"),
        np.arange(b),
        {s: torch.randn(b, t, i.dim, generator=g) for s, i in INPUTS.items()},
        {s: torch.ones(b, t, dtype=torch.bool) for s in INPUTS},
        {s: torch.ones(b, dtype=torch.bool) for s in INPUTS},
        torch.randn(b, t, 1, generator=g) * 2,
        torch.ones(b, t, dtype=torch.bool),
    )
    opt = torch.optim.Adam([p for layer in model.log_var for p in layer.parameters()], lr=0.05)

    def co() -> torch.Tensor:
        c = model.co_losses(model(batch), batch)
        return c["intra"].sum() + c["cross"]

    before = co().item()
    for _ in range(300):
        opt.zero_grad()
        loss = co()
        loss.backward()
        opt.step()
    assert co().item() < before / 20
    out = model(batch)
    d, _ = model.distances(out, batch)
    s = out.uncertainty
    for k, name in enumerate(INPUTS):
        assert (s[name].argmax(1) == d[:, :, k].argmax(1)).all()


@pytest.fixture(scope="module")
def three_store(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store plus a third modality (``text/words``: 4-D, 10 Hz, random)."""
    path = tmp_path_factory.mktemp("three") / "s.zarr"
    shutil.copytree(demo_store, path)
    store = open_store(path)
    spec = StreamSpec("text/words", (4,), "float32", 10.0, provenance={"backbone": "test"})
    w = StreamWriter(zarr.open_group(str(path), mode="r+"), spec, part_size=8)
    rng = np.random.default_rng(0)
    for row, sid in enumerate(store.sample_ids):
        n = len(store.stream("audio/mfcc").timestamps(sid)) // 10
        w.add(row, rng.standard_normal((n, 4)).astype(np.float32), (np.arange(n) + 0.5) / 10)
    w.close()
    return path


@pytest.mark.parametrize(
    ("task", "labels", "level", "streams"),
    [
        ("multiclass", "av", "sequence", STREAMS),
        ("multiclass", "arousal", "frame", STREAMS),  # the paper's binned 3-class, per frame
        ("regression", "valence,arousal", "sequence", STREAMS),
        ("regression", "valence,arousal", "frame", STREAMS),
        ("multiclass", "av", "sequence", (*STREAMS, "text/words")),
    ],
)
def test_cold_trains_in_every_setting(
    three_store: Path, tmp_path: Path, task: str, labels: str, level: str, streams: tuple[str, ...]
) -> None:
    cfg = TrainConfig(
        store=str(three_store),
        method="cold",
        data=DataConfig(
            streams=streams,
            labels=labels,
            task=task,
            level=level,
            align=None if level == "frame" else "rate:10",
        ),
        epochs=2,
        bootstrap=0,
        class_weights="inverse",
        regression_loss="ccc+mse",
        method_config=SMALL,
    )
    m = train(cfg, tmp_path)
    key = "ccc" if task == "regression" else "macro_f1"
    assert np.isfinite(m["test"][key]) and m["frame_level"] == (level == "frame")
    assert set(m["test"]["per_stream"]) == set(streams)
    for h in m["history"]:
        assert {"train_co_intra", "train_co_cross", "train_regu", "train_unimodal"} <= set(h)
        assert all(np.isfinite(v) for v in h.values())


def test_missing_modality_at_test_time_gets_zero_weight(demo_store: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        store=str(demo_store),
        method="cold",
        data=DataConfig(streams=STREAMS, labels="arousal", task="regression", level="frame"),
        epochs=1,
        bootstrap=0,
        method_config=SMALL,
    )
    trainer = Trainer(cfg, tmp_path)
    trainer.fit()
    gone = Perturbation("missing", ("video/mobilenetv2",))
    pred = predict(trainer.model, trainer.data, "test", 8, perturbation=gone)
    w = np.concatenate(pred.weights)
    assert w.shape[1] == 2 and (w[:, 1] == 0).all() and np.allclose(w[:, 0], 1)
    # With video gone, COLD's fused output is its audio branch exactly.
    np.testing.assert_allclose(pred.scores, pred.per_stream["audio/mfcc"], rtol=1e-5, atol=1e-6)


def test_noise_on_a_fraction_corrupts_one_run_of_frames() -> None:
    batch = _batch(TaskSpec("multiclass", 3))
    noisy = Perturbation("noise", ("audio/a",), p=0.5).apply(batch, torch.Generator().manual_seed(7))
    hit = noisy.corrupted["audio/a"]
    for b, n in enumerate(batch.masks["audio/a"].sum(1).tolist()):
        idx = torch.nonzero(hit[b]).flatten().tolist()
        assert len(idx) == round(0.5 * n) and idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive
    changed = (noisy.inputs["audio/a"] != batch.inputs["audio/a"]).any(-1)
    assert torch.equal(changed, hit)


@pytest.mark.slow
def test_cli_preset_eval_predict_and_plot(demo_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "cold"
    common = ["--store", demo_store, "--streams", ",".join(STREAMS)]
    run_avx(
        "fuse", "train", "--preset", "cold-paper", *common, "--labels", "arousal", "--task", "regression",
        "--level", "frame", "--epochs", "2", "--set", "hidden=8", "--set", "layers=1", "--out", run,
    )  # fmt: skip
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "cold" and cfg["epochs"] == 2  # the explicit option wins
    assert (cfg["batch_size"], cfg["lr"], cfg["scheduler"], cfg["t0"], cfg["t_mult"]) == (
        4, 5e-3, "cosine-restarts", 1, 2,
    )  # fmt: skip
    assert cfg["regression_loss"] == "ccc+mse" and cfg["method_config"]["lambda_intra"] == 1e-3
    ev = run_avx("fuse", "eval", run, "--noise", "video:0.5", "--occlude", "0.5")
    assert "mean fusion weight of video/mobilenetv2 on corrupted / clean frames" in ev.stdout
    res = json.loads((run / "eval.json").read_text())["settings"]
    for name in ("noise video/mobilenetv2 N(0,1) on 0.5 of frames", "occlude 0.5 of faces"):
        fw = res[name]["fusion_weight"]["video/mobilenetv2"]
        share = fw["n_corrupted"] / (fw["n_corrupted"] + fw["n_clean"])
        assert 0.4 < share < 0.6 and 0 < fw["corrupted"] < 1 and 0 < fw["clean"] < 1
    assert set(res["clean"]["mean_fusion_weight"]) == set(STREAMS)
    run_avx("fuse", "predict", run)
    frames = np.load(run / "predict" / "frames.npz")
    sid = next(k.split("/")[0] for k in frames.files if k.endswith("/fusion_weights"))
    for key in ("fusion_weights", "scores", "scores/audio/mfcc", "target", "times", "uncertainty/audio/mfcc"):
        assert f"{sid}/{key}" in frames.files, key
    png = tmp_path / "frames.png"
    run_avx("fuse", "plot", run / "predict", "--id", sid, "--out", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    bad = run_avx("fuse", "plot", run / "predict", "--id", "nope", "--out", png, check=False)
    assert bad.returncode == 2 and "no per-frame outputs for sample 'nope'" in bad.stderr
    wrong = run_avx("fuse", "train", "--preset", "nope", *common, "--out", tmp_path / "x", check=False)
    assert wrong.returncode == 2 and "cold-paper" in wrong.stderr
