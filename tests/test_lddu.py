"""LDDU (paper 004), CARAT, three-stream data, MOSI/MOSEI sentiment metrics, seeds."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from avx.corpora import load_corpus
from avx.demo.mmer import CUES, EMOTIONS, write_mmer_pickle
from avx.fuse import metrics as M
from avx.fuse.contrastive import ContrastQueue, supcon
from avx.fuse.data import Batch, DataConfig, StreamInfo
from avx.fuse.evaluate import score
from avx.fuse.methods import create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.methods.lddu import ordinal_calibration
from avx.fuse.presets import LDDU_ABLATIONS, apply_preset
from avx.fuse.robustness import evaluate_run
from avx.fuse.runs import compare_runs, run_trials
from avx.fuse.tasks import Objective
from avx.fuse.train import TrainConfig, Trainer, train
from avx.serialization import load_tensors
from avx.store_schema import create_store, open_store
from tests.conftest import assert_selection_ignores_test, crash_then_resume, run_avx

STREAMS3 = ("text/bert", "audio/covarep", "video/facet")
TINY = {"d_model": 32, "heads": 2, "layers": 1, "z_dim": 16, "latent": 8, "hidden": 32, "dropout": 0.1}
TINY_CARAT = {"d_model": 32, "heads": 2, "layers": 1, "latent": 16, "projection": 8, "dropout": 0.1}


@pytest.fixture(scope="module")
def mmer_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic trimodal corpus (CMU-MOSEI release layout) through the cmu-mosei adapter."""
    root = tmp_path_factory.mktemp("mmer")
    write_mmer_pickle(root / "corpus" / "mosei_synthetic.pkl", n=(240, 80, 80), length=10, strength=0.8)
    return create_store(root / "mmer.zarr", load_corpus("cmu-mosei", root / "corpus"))


def _config(
    store: Path, method: str = "lddu", streams=STREAMS3, epochs: int = 2, **method_config
) -> TrainConfig:
    tiny = TINY if method == "lddu" else TINY_CARAT if method == "carat" else {}
    return TrainConfig(
        store=str(store),
        method=method,
        data=DataConfig(streams=streams, labels="multilabel", task="multilabel"),
        epochs=epochs,
        batch_size=16,
        lr=2e-3,
        threshold=0.5,
        bootstrap=0,
        method_config={**tiny, **method_config},
    )


def _batch(targets: torch.Tensor, n_streams: int = 3, frames: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b = len(targets)
    names = ["text/t", "audio/a", "video/v"][:n_streams]
    return Batch(
        ids=[f"s{i}" for i in range(b)],
        index=np.arange(b),
        inputs={s: torch.randn(b, frames, 6, generator=g) for s in names},
        masks={s: torch.ones(b, frames, dtype=torch.bool) for s in names},
        present={s: torch.ones(b, dtype=torch.bool) for s in names},
        targets=targets,
        target_mask=torch.ones(b, dtype=torch.bool),
    )


def _model(n_streams: int = 3, q: int = 3, **options):
    names = ["text/t", "audio/a", "video/v"][:n_streams]
    inputs = {s: StreamInfo(6, modality=s.split("/")[0]) for s in names}
    return create_method("lddu", inputs, TaskSpec("multilabel", q), **{**TINY, **options})


# -- loss terms against hand computations -----------------------------------------------------


def _supcon_by_hand(feats, cats, bank, bank_cats, t):
    """Eqs. 5-7 with explicit loops: anchors over the batch, contrast set = others + bank."""
    per = []
    pool = [(f, c, ("b", i)) for i, (f, c) in enumerate(zip(feats, cats, strict=True))]
    pool += [(f, c, ("q", i)) for i, (f, c) in enumerate(zip(bank, bank_cats, strict=True)) if c >= 0]
    for i, (e, c) in enumerate(zip(feats, cats, strict=True)):
        others = [(f, k) for f, k, who in pool if who != ("b", i)]
        denom = sum(math.exp(float(e @ f) / t) for f, _ in others)
        pos = [f for f, k in others if k == c]
        if not pos:
            continue
        per.append(-sum(math.log(math.exp(float(e @ f) / t) / denom) for f in pos) / len(pos))
    return sum(per), sum(per) / len(per)


def test_supcon_with_a_queue_matches_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    cats = torch.tensor([0, 1, 0, 2, 1])
    bank = torch.nn.functional.normalize(torch.randn(4, 4, generator=g), dim=-1)
    bank_cats = torch.tensor([2, -1, 0, 3])  # -1: an empty slot, never contrasted
    total, mean = _supcon_by_hand(feats.double(), cats.tolist(), bank.double(), bank_cats.tolist(), 0.07)
    assert float(supcon(feats, cats, bank, bank_cats, 0.07, "sum")) == pytest.approx(total, rel=1e-5)
    assert float(supcon(feats, cats, bank, bank_cats, 0.07, "mean")) == pytest.approx(mean, rel=1e-5)
    # without the queue, anchor 3 (category 2) has no positive and is left out
    total, _ = _supcon_by_hand(feats.double(), cats.tolist(), bank[:0].double(), [], 0.07)
    assert float(supcon(feats, cats, temperature=0.07)) == pytest.approx(total, rel=1e-5)


def test_lddu_contrastive_term_is_eqs_4_to_7_over_positive_distributions() -> None:
    torch.manual_seed(0)
    model = _model(beta_scl=1.0, lambda_ocl=0.0, gamma_dir=0.0, queue_size=16)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    batch = _batch(y)
    batch.present["video/v"][1] = False
    batch.masks["video/v"][1] = False
    model.eval()  # no dropout, and the queue stays empty
    out = model(batch)
    scl = float(model.loss(out, batch, Objective("multilabel"))["scl"].detach())
    mu, sigma = out.extra["mu"].detach().double(), out.extra["sigma"].detach().double()
    feats, cats = [], []
    for i in range(4):
        for m, s in enumerate(model.streams):
            for j in range(3):
                if y[i, j] and batch.present[s][i]:  # a positive distribution (Eq. 5's B+)
                    e = torch.cat([mu[i, m, j] / mu[i, m, j].norm(), sigma[i, m, j] / sigma[i, m, j].norm()])
                    feats.append(e)
                    cats.append(m * 3 + j)  # one of the 3q categories (modality, label)
    total, _ = _supcon_by_hand(torch.stack(feats), cats, torch.zeros(0, 16), [], 0.07)
    assert scl == pytest.approx(total, rel=1e-5)
    assert int((model.queue.cats >= 0).sum()) == 0
    model.train()
    model.loss(model(batch), batch, Objective("multilabel"))
    assert int((model.queue.cats >= 0).sum()) == len(feats)  # enqueued once trained on


def test_queue_wraps_keeps_the_newest_and_holds_no_gradients() -> None:
    q = ContrastQueue(5, 2)
    x = torch.arange(14, dtype=torch.float32).view(7, 2).requires_grad_()
    q.push(x[:3] * 2, torch.arange(3))
    q.push(x[3:7] * 2, torch.arange(3, 7))  # 7 entries in a queue of 5: 0 and 1 dropped
    assert sorted(q.cats.tolist()) == [2, 3, 4, 5, 6] and int(q.ptr) == 2
    assert q.cats.tolist() == [5, 6, 2, 3, 4]  # wrapped: slots 0, 1 overwritten by the newest
    torch.testing.assert_close(q.feats[0], x[5].detach() * 2)
    assert not q.feats.requires_grad and q.feats.grad_fn is None
    q.push(x * 2, torch.arange(10, 17))  # more than fits: the last five
    assert sorted(q.cats.tolist()) == [12, 13, 14, 15, 16]
    state = q.state("k_")
    fresh = ContrastQueue(5, 2)
    fresh.load(state, "k_")
    assert (
        torch.equal(fresh.feats, q.feats) and torch.equal(fresh.cats, q.cats) and int(fresh.ptr) == int(q.ptr)
    )
    # the queue's buffers are not part of the saved model
    model = _model()
    assert not any(k.startswith("queue.") for k in model.state_dict())


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _kl(p, q):
    return float((p * np.log(p / q)).sum())


def test_ordinal_calibration_is_the_bidirectional_kl_of_eq_15() -> None:
    rng = np.random.default_rng(0)
    s, d, r = rng.random(6), rng.random(6), rng.random(6)
    ps, pd_, pr = _softmax(s), _softmax(d), _softmax(r)
    want = _kl(pd_, pr) + _kl(pr, pd_) + _kl(ps, pr) + _kl(pr, ps)
    t = lambda a: torch.tensor(a)  # noqa: E731
    assert float(ordinal_calibration(t(s), t(d), t(r), "SR+DR")) == pytest.approx(want, rel=1e-6)
    assert float(ordinal_calibration(t(s), t(d), t(r), "DS")) == pytest.approx(
        _kl(pd_, ps) + _kl(ps, pd_), rel=1e-6
    )


def test_ordinal_term_uses_s_d_and_the_correctness_history() -> None:
    torch.manual_seed(0)
    model = _model(lambda_ocl=1.0, beta_scl=0.0, gamma_dir=0.0)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    batch = _batch(y)
    model.eval()
    out = model(batch)
    assert float(model.loss(out, batch, Objective("multilabel"))["ocl"].detach()) == 0.0  # no past epoch
    # two past epochs: right on samples 0 and 1 twice, on sample 2 once, never on 3
    model._grow(4, torch.device("cpu"))
    model._right[:] = torch.tensor([2.0, 2.0, 1.0, 0.0])
    model._epochs[:] = 2.0
    p = torch.sigmoid(out.extra["dir_logits"].detach().double())
    sigma = out.extra["sigma"].detach().double()
    s = 1 / sigma.flatten(1).norm(dim=-1)  # S_i = 1 / ||sigma_i|| over modalities and labels
    d = 1 - (y.double() - p).abs().mean(-1)  # D_i = 1 - d_i
    r = torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    want = _kl(_softmax(d.numpy()), _softmax(r.numpy())) + _kl(_softmax(r.numpy()), _softmax(d.numpy()))
    want += _kl(_softmax(s.numpy()), _softmax(r.numpy())) + _kl(_softmax(r.numpy()), _softmax(s.numpy()))
    got = float(model.loss(out, batch, Objective("multilabel"))["ocl"])
    assert got == pytest.approx(want, rel=1e-4)


def test_gate_fuses_mean_and_variance_predictions_by_correctness() -> None:
    torch.manual_seed(0)
    y = torch.tensor([[1, 0, 1], [0, 1, 0]])
    batch = _batch(y)
    for gate in ("estimate", "label"):
        model = _model(gate=gate)
        model.eval()
        out = model(batch)
        b = len(batch)
        p = torch.sigmoid(out.extra["dir_logits"])
        p_mu = torch.sigmoid(model.mu_classifier(out.extra["mu"].reshape(b, -1)))
        p_sigma = torch.sigmoid(model.sigma_classifier(out.extra["sigma"].reshape(b, -1)))
        estimate = p**2 + (1 - p) ** 2  # the info classifier's expected correctness
        torch.testing.assert_close(out.extra["gate"], estimate)  # inference: never the label
        torch.testing.assert_close(torch.sigmoid(out.logits), estimate * p_mu + (1 - estimate) * p_sigma)
        model.train()
        for mod in model.modules():  # deterministic forward in training mode
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        out = model(batch)
        p = torch.sigmoid(out.extra["dir_logits"])
        want = 1 - (y - p).abs() if gate == "label" else p**2 + (1 - p) ** 2
        torch.testing.assert_close(out.extra["gate"], want)


def test_correctness_history_accumulates_per_sample_across_epochs() -> None:
    model = _model()
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    batch = _batch(y)
    right = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.9, 0.2, 0.1]])  # samples 0, 1 right; 2 not
    model.record(right, batch)
    model.end_epoch()
    wrong_first = torch.tensor([[0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.9, 0.9, 0.1]])  # 1, 2 right
    model.record(wrong_first, batch)
    model.end_epoch()
    r, has = model.history(torch.arange(3))
    torch.testing.assert_close(r, torch.tensor([0.5, 1.0, 0.5]))
    assert has.all()
    # a sample not trained on in an epoch keeps its count
    model.record(
        right[:1], replace(batch, index=np.array([0]), targets=y[:1], target_mask=batch.target_mask[:1])
    )
    model.end_epoch()
    r, _ = model.history(torch.arange(3))
    torch.testing.assert_close(r, torch.tensor([2 / 3, 1.0, 0.5]))
    clone = _model()
    clone.load_training_state(model.training_state())
    torch.testing.assert_close(clone.history(torch.arange(3))[0], r)
    hamming = _model(correctness="hamming")
    hamming.record(wrong_first, batch)
    hamming.end_epoch()
    torch.testing.assert_close(hamming.history(torch.arange(3))[0], torch.tensor([2 / 3, 1.0, 1.0]))


# -- training ---------------------------------------------------------------------------------------


def _frequency_baseline(y: np.ndarray, prior: np.ndarray) -> float:
    """The best micro-F1 of a constant prediction: the k most frequent training labels."""
    order = np.argsort(-prior)
    best = 0.0
    for k in range(1, len(order) + 1):
        pred = np.zeros_like(y)
        pred[:, order[:k]] = 1
        best = max(best, f1_score(y, pred, average="micro", zero_division=0))
    return best


def test_lddu_learns_three_modalities_and_r_i_is_kept_per_sample(mmer_store: Path, tmp_path: Path) -> None:
    cfg = _config(mmer_store, epochs=8)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    state = trainer.model.training_state()
    train_rows = trainer.data.indices("train")
    other = np.setdiff1d(np.arange(len(trainer.data.ids)), train_rows)
    assert (state["r_epochs"][train_rows] == 8).all()  # every training sample, once per epoch
    assert (state["r_epochs"][other] == 0).all() if len(state["r_epochs"]) > other.max() else True
    r = state["r_right"][train_rows] / 8
    assert 0 < float(r.mean()) < 1 and len(set(r.tolist())) > 3  # a spread the ranking can use
    m = trainer.finish(0.0)
    assert m["names"] == list(EMOTIONS)
    ytr = trainer.data.targets_all.values[trainer.data.rows[train_rows]]
    yte = trainer.data.targets_all.values[trainer.data.rows[trainer.data.indices("test")]]
    base = _frequency_baseline((yte > 0).astype(int), (ytr > 0).mean(0))
    assert m["test"]["micro_f1"] > base + 0.15, (m["test"]["micro_f1"], base)
    # CUES: every emotion is cued somewhere, so a learned model has no all-zero class
    assert set(CUES) == set(EMOTIONS)


@pytest.mark.parametrize("method", ["lddu", "carat"])
def test_lddu_and_carat_train_on_two_and_three_streams(method: str, mmer_store: Path, tmp_path: Path) -> None:
    for streams in (STREAMS3, STREAMS3[:2]):
        m = train(
            _config(mmer_store, method, streams=streams, epochs=1), tmp_path / f"{method}-{len(streams)}"
        )
        assert m["streams"] == list(streams) and math.isfinite(m["test"]["micro_f1"])
        assert {"micro_precision", "micro_recall", "jaccard_accuracy"} <= set(m["test"])


def test_lddu_resumes_bit_identically_with_its_queue_and_history(mmer_store: Path, tmp_path: Path) -> None:
    cfg = _config(mmer_store, epochs=3, queue_size=64)
    ref = train(cfg, tmp_path / "ref")
    resumed = crash_then_resume(cfg, tmp_path / "run", epoch=2)
    assert resumed["test"] == ref["test"]
    a, b = (
        load_tensors(tmp_path / "ref" / "model.safetensors"),
        load_tensors(tmp_path / "run" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lddu_model_selection_never_reads_test(mmer_store: Path, tmp_path: Path) -> None:
    """As the framework's leakage test: scrambled test labels change nothing in training."""

    def flip(values: np.ndarray, rows: np.ndarray, _n_classes: int) -> None:
        values[rows] = (values[rows] == 0).astype(values.dtype)

    assert_selection_ignores_test(_config(mmer_store, epochs=2), tmp_path, flip)


# -- presets ---------------------------------------------------------------------------------------


def test_lddu_paper_preset_and_table_3_ablations(mmer_store: Path) -> None:
    base = TrainConfig(store=str(mmer_store), method="lddu", data=DataConfig(streams=STREAMS3))
    cfg = apply_preset(base, "lddu-paper", set())
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.scheduler, cfg.warmup) == (
        2e-5,
        128,
        30,
        "warmup-cosine",
        3,
    )
    assert cfg.data.task == "multilabel" and cfg.select_metric == "micro_f1"
    model = create_method(
        "lddu", {s: StreamInfo(6) for s in ("text/t", "audio/a")}, TaskSpec("multilabel", 3)
    )
    c = model.config
    assert (c.lambda_ocl, c.beta_scl, c.gamma_dir, c.queue_size, c.temperature) == (0.1, 0.8, 0.1, 8192, 0.07)
    assert (c.d_model, c.heads, c.layers, c.dropout, c.z_dim, c.latent) == (256, 8, 3, 0.3, 128, 64)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    for n, (_, options) in LDDU_ABLATIONS.items():
        cfg = apply_preset(base, f"lddu-ablation:{n}", set())
        assert cfg.method_config == options
        m = _model(2, **options)
        terms = m.loss(m(_batch(y, 2)), _batch(y, 2), Objective("multilabel"))
        torch.stack(list(terms.values())).sum().backward()
        assert all(p.grad is not None for p in m.parameters())
    assert not hasattr(_model(esm=False), "label_embeddings") or _model(esm=False).label_embeddings is None
    assert _model(fusion="mu").sigma_classifier is None and _model(fusion="sigma").mu_classifier is None


# -- three streams: robustness settings and the CLI -------------------------------------------------


def test_three_stream_missing_modalities_and_all_seven_subsets(mmer_store: Path, tmp_path: Path) -> None:
    train(_config(mmer_store, "lddu", epochs=1), tmp_path / "run")
    res = evaluate_run(tmp_path / "run", modality_table=("all", "mean"))
    table = pd.DataFrame(res["table"]).set_index("setting")
    rows = list(table.index)
    assert rows[:7] == [
        "AVT",
        "AV (text missing)",
        "AT (video missing)",
        "VT (audio missing)",
        "A (video, text missing)",
        "V (audio, text missing)",
        "T (audio, video missing)",
    ]
    assert rows[7] == "M (mean of AVT, AV, AT, VT, A, V, T)"
    assert table.loc[rows[7], "micro_f1"] == pytest.approx(table.loc[rows[:7], "micro_f1"].mean())
    one = pd.DataFrame(evaluate_run(tmp_path / "run", missing=["text"])["table"]).set_index("setting")
    assert one.loc["missing text/bert", "micro_f1"] == pytest.approx(
        table.loc["AV (text missing)", "micro_f1"]
    )
    assert table.loc["T (audio, video missing)", "micro_f1"] != table.loc["AVT", "micro_f1"]
    ev = run_avx("fuse", "eval", str(tmp_path / "run"), "--missing", "text", "--settings", "at,t")
    rows = [line.split("|")[1].strip() for line in ev.stdout.splitlines() if line.startswith("| ")][1:]
    assert rows == ["AVT", "AT (video missing)", "T (audio, video missing)", "missing text/bert"]
    bad = run_avx("fuse", "eval", str(tmp_path / "run"), "--settings", "ax", check=False)
    assert bad.returncode == 2 and "--settings takes" in bad.stderr


def test_unaligned_release_keeps_each_modality_length(tmp_path: Path) -> None:
    write_mmer_pickle(tmp_path / "c" / "mosei_unaligned.pkl", n=(6, 3, 3), length=5, aligned=False)
    store = open_store(create_store(tmp_path / "u.zarr", load_corpus("cmu-mosei", tmp_path / "c")))
    first = store.sample_ids[0]
    assert len(store.stream("text/bert")[first]) == 5
    assert len(store.stream("audio/covarep")[first]) == 50 and len(store.stream("video/facet")[first]) == 50
    assert store.multilabel is not None


def test_seeds_trials_and_a_multi_metric_comparison(mmer_store: Path, tmp_path: Path) -> None:
    late = replace(_config(mmer_store, "late", epochs=1), method_config={"hidden": 16, "layers": 1})
    summary = run_trials(late, tmp_path / "late", seeds=2)
    assert (
        summary["over"] == "seed" and summary["folds"] == [0, 1] and summary["runs"] == ["seed-0", "seed-1"]
    )
    assert json.loads((tmp_path / "late" / "seed-1" / "metrics.json").read_text())["seed"] == 1
    lddu = _config(mmer_store, "lddu", epochs=1)
    run_trials(lddu, tmp_path / "lddu", seeds=2)
    cols = ["jaccard_accuracy", "micro_precision", "micro_recall", "micro_f1"]
    table = compare_runs([tmp_path / "lddu", tmp_path / "late"], ",".join(cols))
    per = json.loads((tmp_path / "lddu" / "trials.json").read_text())["per_fold"]
    for c in cols:
        assert table.loc[0, c] == pytest.approx(np.mean(per[c]))
        assert table.loc[0, f"{c} std"] == pytest.approx(np.std(per[c], ddof=1))
    out = run_avx(
        "fuse", "compare", str(tmp_path / "lddu"), str(tmp_path / "late"), "--metric", ",".join(cols)
    )
    assert "±" in out.stdout and "micro_recall" in out.stdout


# -- metrics ---------------------------------------------------------------------------------------


def test_multilabel_precision_and_recall_are_micro_averaged_as_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, (40, 6)), rng.integers(0, 2, (40, 6))
    assert M.SCORERS["micro_precision"].fn(y, p) == pytest.approx(precision_score(y, p, average="micro"))
    assert M.SCORERS["micro_recall"].fn(y, p) == pytest.approx(recall_score(y, p, average="micro"))
    assert {"micro_precision", "micro_recall", "jaccard_accuracy"} <= set(M.table_metrics("multilabel"))


def test_mosi_mosei_sentiment_metrics_match_a_hand_computation() -> None:
    y = np.array([-3.0, -1.4, 0.0, 0.0, 0.6, 2.5, 1.5, -0.5])
    p = np.array([-2.2, 0.3, -0.2, 0.4, 1.0, 3.4, 0.5, -0.5])
    # Has0: negative < 0 <= non-negative, every sample
    yb, pb = [v >= 0 for v in y], [v >= 0 for v in p]  # T: ..., computed by eye below
    assert yb == [False, False, True, True, True, True, True, False]
    assert pb == [False, True, False, True, True, True, True, False]
    assert M.SCORERS["acc2_has0"].fn(y, p) == pytest.approx(6 / 8)
    # weighted F1 over the two classes: class True (support 5): tp 4, fp 1, fn 1 -> 0.8;
    # class False (support 3): tp 2, fp 1, fn 1 -> 2/3; weighted (5 * 0.8 + 3 * 2/3) / 8
    assert M.SCORERS["f1_has0"].fn(y, p) == pytest.approx((5 * 0.8 + 3 * 2 / 3) / 8)
    # Non0: the two zero truths left out; positive > 0
    # kept: y = [-3, -1.4, .6, 2.5, 1.5, -.5] -> [F, F, T, T, T, F]; p -> [F, T, T, T, T, F]
    assert M.SCORERS["acc2_non0"].fn(y, p) == pytest.approx(5 / 6)
    # True: tp 3, fp 1, fn 0 -> 6/7; False: tp 2, fp 0, fn 1 -> 0.8; weighted (3 * 6/7 + 3 * 0.8) / 6
    assert M.SCORERS["f1_non0"].fn(y, p) == pytest.approx((3 * 6 / 7 + 3 * 0.8) / 6)
    # Acc7: clip to [-3, 3], round half to even: y -> [-3, -1, 0, 0, 1, 2, 2, -0]
    # p -> [-2, 0, -0, 0, 1, 3, 0, -0]: equal at 2, 3, 4, 7 -> 4 / 8
    assert M.SCORERS["acc7"].fn(y, p) == pytest.approx(4 / 8)
    # Acc5: clip to [-2, 2]: y -> [-2, -1, 0, 0, 1, 2, 2, -0]; p -> [-2, 0, -0, 0, 1, 2, 0, -0]: 0,2,3,4,5,7
    assert M.SCORERS["acc5"].fn(y, p) == pytest.approx(6 / 8)
    assert M.SCORERS["mae"].fn(y, p) == pytest.approx(np.abs(y - p).mean())
    assert M.SCORERS["pearson"].fn(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1])
    report = M.regression_report(y, p, ["sentiment"])
    assert report["acc7"] == pytest.approx(0.5) and report["f1_non0"] == pytest.approx(
        (3 * 6 / 7 + 3 * 0.8) / 6
    )
    assert "acc7" not in M.regression_report(y, p, ["valence"])  # sentiment metrics: sentiment only
    assert "acc7" in M.table_metrics("regression", ["sentiment"])
    assert "acc7" not in M.table_metrics("regression", ["valence", "arousal"])
    assert score("acc2_non0", "regression", ["sentiment"], y, p) == pytest.approx(5 / 6)
    with pytest.raises(Exception, match="applies to sentiment"):
        score("acc7", "regression", ["valence"], y, p)
