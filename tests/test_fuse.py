"""Fusion framework on a real extracted store: data, methods, trainer, evaluation, CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avx.fuse.data import DataConfig, FusionData
from avx.fuse.evaluate import Perturbation
from avx.fuse.methods import METHODS
from avx.fuse.robustness import predict_run
from avx.fuse.train import Schedule, TrainConfig, Trainer, train
from avx.serialization import load_tensors
from avx.store_schema import open_store
from tests.conftest import assert_selection_ignores_test, crash_then_resume, run_avx

STREAMS = ("audio/mfcc", "video/mobilenetv2")
SMALL = {"hidden": 16, "layers": 1}
SMALL_BY_METHOD = {
    "unimodal": SMALL,
    "early": SMALL,
    "late": SMALL,
    "context": SMALL,
    "mult": {"d_model": 16, "cross_depth": 1},
    "tav": {"d_model": 16, "cross_depth": 1},
    "tva": {"d_model": 16, "cross_depth": 1},
    "vavl": {"d_model": 16, "heads": 2, "modality_blocks": 1, "shared_blocks": 1, "conv_kernel": 5},
    "conformer-uni": {"d_model": 16, "heads": 2, "blocks": 1, "conv_kernel": 5},
    "uavm": {"d_model": 16, "heads": 2, "modality_depth": 1, "shared_depth": 1},
    "auxformer": {"d_model": 10, "heads": 2, "depth": 1},
    "tlstm": {"d_model": 16, "heads": 2, "encoder_depth": 1},
}


def config(store: Path, method: str = "late", **kw) -> TrainConfig:
    data = kw.pop("data", DataConfig(streams=STREAMS))
    return TrainConfig(
        store=str(store),
        method=method,
        data=data,
        epochs=kw.pop("epochs", 2),
        bootstrap=kw.pop("bootstrap", 0),
        method_config=kw.pop("method_config", SMALL_BY_METHOD[method]),
        **kw,
    )


# -- data ----------------------------------------------------------------------------------


def test_labels_padding_and_train_only_normalisation(demo_store: Path) -> None:
    store = open_store(demo_store)
    data = FusionData(store, DataConfig(streams=STREAMS, labels="av"))
    hard = store.labels["av"].hard_labels()
    assert data.n_unlabelled == int((hard < 0).sum()) and len(data.ids) == int((hard >= 0).sum())
    train = data.indices("train")
    frames = np.concatenate([data.features["audio/mfcc"][i] for i in train])
    np.testing.assert_allclose(data.normalizer.mean["audio/mfcc"], frames.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data.normalizer.std["audio/mfcc"], frames.std(0), rtol=1e-3, atol=1e-4)
    batch = next(data.batches("dev", 4))
    x, m = batch.inputs["audio/mfcc"], batch.masks["audio/mfcc"]
    lengths = [len(data.features["audio/mfcc"][i]) for i in data.indices("dev")[:4]]
    assert m.sum(1).tolist() == lengths and x.shape[1] == max(lengths) and (x[~m] == 0).all()
    assert batch.targets.tolist() == hard[data.rows[data.indices("dev")[:4]]].tolist()
    # Collation normalises in place into the batch: the same bits as (x - mean) / std.
    dev = data.indices("dev")[:4]
    for j, i in enumerate(dev):
        f = data.features["audio/mfcc"][i]
        want = (f - data.normalizer.mean["audio/mfcc"]) / data.normalizer.std["audio/mfcc"]
        assert np.array_equal(x[j, : len(f)].numpy(), want.astype(np.float32))
    f16 = data.features["audio/mfcc"][dev[0]].astype(np.float16)
    slot = np.zeros((len(f16) + 2, f16.shape[1]), np.float32)
    data.normalizer("audio/mfcc", f16, out=slot[: len(f16)])
    assert np.array_equal(slot[: len(f16)], data.normalizer("audio/mfcc", f16)) and not slot[len(f16) :].any()


def test_multilabel_regression_and_binned_targets(demo_store: Path) -> None:
    store = open_store(demo_store)
    ml = FusionData(store, DataConfig(streams=STREAMS, labels="voice", task="multilabel"))
    assert ml.targets_all.values.shape == (len(store.samples), 6)
    np.testing.assert_array_equal(ml.targets_all.values, store.labels["voice"].multihot)
    soft = FusionData(
        store, DataConfig(streams=STREAMS, labels="voice", task="multilabel", soft_targets=True)
    )
    assert np.allclose(soft.targets_all.values.sum(1), 1)
    reg = FusionData(store, DataConfig(streams=STREAMS, labels="valence,arousal", task="regression"))
    np.testing.assert_allclose(reg.targets_all.values, store.dimensions.scaled())
    binned = FusionData(store, DataConfig(streams=STREAMS, labels="valence", task="multiclass"))
    v = store.dimensions.scaled()[:, 0]
    expected = np.where(v < -0.05, 0, np.where(v > 0.05, 2, 1))
    np.testing.assert_array_equal(binned.targets_all.values, expected)
    assert binned.names == ["low", "mid", "high"]


def test_soft_multiclass_targets_train_on_smoothed_votes_and_score_the_class(
    demo_store: Path, tmp_path: Path
) -> None:
    """VAVL's recipe: cross-entropy on 0.94 p + 0.01 of the vote proportions (six
    classes); the clips and the class metrics score are those of the hard labels."""
    import torch

    from avx.fuse.data import Batch
    from avx.fuse.tasks import Objective
    from avx.fuse.train import make_objective

    store = open_store(demo_store)
    cfg = DataConfig(streams=STREAMS, labels="av", task="multiclass", soft_targets=True)
    soft = FusionData(store, cfg)
    hard = FusionData(store, DataConfig(streams=STREAMS, labels="av", task="multiclass"))
    np.testing.assert_array_equal(soft.ids, hard.ids)
    np.testing.assert_array_equal(soft.targets_all.values, hard.targets_all.values)
    p = np.nan_to_num(store.labels["av"].distribution)
    rated = p.sum(1) > 0
    np.testing.assert_allclose(soft.targets_all.soft[rated], 0.94 * p[rated] + 0.01, atol=1e-6)
    objective = make_objective(config(demo_store, data=cfg), soft)
    assert objective.soft is not None and objective.soft.shape == (len(soft.ids), 6)
    # the loss is -sum_c p_c log q_c with the smoothed p of each clip (found by Batch.index)
    idx = np.array([3, 0, 5])
    scores = torch.randn(3, 6)
    b = Batch([""] * 3, idx, {}, {}, {}, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool))
    want = -(objective.soft[idx] * scores.log_softmax(-1)).sum(-1).mean()
    assert objective(scores, b, None).item() == pytest.approx(want.item(), rel=1e-6)
    one_hot = Objective("multiclass", soft=torch.eye(6)[[1, 2, 4]].repeat(2, 1))
    b2 = replace(b, index=np.arange(3), targets=torch.tensor([1, 2, 4]))
    assert one_hot(scores, b2, None).item() == pytest.approx(Objective("multiclass")(scores, b2, None).item())
    m = train(config(demo_store, data=cfg), tmp_path)
    assert np.isfinite(m["test"]["macro_f1"]) and m["n_samples"] == hard.counts()
    with pytest.raises(Exception, match="soft-targets trains on rater votes"):
        FusionData(store, DataConfig(streams=STREAMS, labels="intended", soft_targets=True))


def test_per_frame_targets_align_every_stream_to_label_times(demo_store: Path) -> None:
    store = open_store(demo_store)
    data = FusionData(store, DataConfig(streams=STREAMS, labels="arousal", task="regression", level="frame"))
    assert data.frame_level and data.align == "labels"
    i = data.indices("train")[0]
    times = store.continuous.times[data.rows[i]]
    for s in STREAMS:
        assert len(data.features[s][i]) == len(times)
    # The aligned video frame at a label time is the stored frame nearest to it.
    video = store.stream("video/mobilenetv2")
    sid = data.ids[i]
    ts = video.timestamps(sid)
    k = int(np.argmin(np.abs(ts - times[3])))
    np.testing.assert_allclose(data.features["video/mobilenetv2"][i][3], video[sid][k])
    batch = data.collate(np.array([i]))
    assert batch.targets.shape == (1, len(times), 1) and batch.target_mask.sum() == len(times)


def test_layer_selection_and_learned_mixing(layered_store: Path) -> None:
    store = open_store(layered_store)
    one = FusionData(store, DataConfig(streams=("audio/layered@2",)))
    both = FusionData(store, DataConfig(streams=("audio/layered@0+2",)))
    every = FusionData(store, DataConfig(streams=("audio/layered@all",)))
    i = one.indices("train")[0]
    np.testing.assert_allclose(one.features["audio/layered"][i], both.features["audio/layered"][i][:, 1])
    np.testing.assert_allclose(
        both.features["audio/layered"][i][:, 1], 3 * both.features["audio/layered"][i][:, 0]
    )
    assert every.info["audio/layered"].layers == 3 and one.info["audio/layered"].layers == 1
    assert next(every.batches("train", 2)).inputs["audio/layered"].shape[2:] == (3, 8)
    metrics = train(
        config(layered_store, "unimodal", data=DataConfig(streams=("audio/layered@all",))),
        layered_store.parent / "run",
    )
    state = load_tensors(layered_store.parent / "run" / "model.safetensors")
    weights = state["layer_mix.audio__layered.weights"]
    assert weights.shape == (3,) and not torch.equal(weights, torch.zeros(3))  # learned
    assert metrics["test"]["n"] > 0
    with pytest.raises(Exception, match=r"has layers 0\.\.2"):
        FusionData(store, DataConfig(streams=("audio/layered@5",)))


def test_length_policies_and_alignment(demo_store: Path) -> None:
    store = open_store(demo_store)
    res = FusionData(store, DataConfig(streams=STREAMS, length=("resample:7",)))
    pad = FusionData(store, DataConfig(streams=STREAMS, length=("audio/mfcc=pad:50",)))
    b = next(res.batches("train", 3))
    assert b.inputs["audio/mfcc"].shape[1] == 7 and b.masks["video/mobilenetv2"].all()
    b = next(pad.batches("train", 3))
    assert b.inputs["audio/mfcc"].shape[1] == 50
    aligned = FusionData(store, DataConfig(streams=STREAMS), align=True)  # what early fusion asks for
    i = aligned.indices("train")[0]
    assert len(aligned.features["video/mobilenetv2"][i]) == len(aligned.features["audio/mfcc"][i])
    pooled = FusionData(store, DataConfig(streams=STREAMS, align="rate:10"))
    sid = pooled.ids[i]
    assert (
        abs(len(pooled.features["audio/mfcc"][i]) - 10 * store.stream("audio/mfcc").timestamps(sid)[-1]) <= 1
    )
    with pytest.raises(Exception, match="bad length policy"):
        FusionData(store, DataConfig(streams=STREAMS, length=("squash:3",)))


def test_streamed_reading_equals_in_memory(demo_store: Path) -> None:
    store = open_store(demo_store)
    mem = FusionData(store, DataConfig(streams=STREAMS))
    streamed = FusionData(store, DataConfig(streams=STREAMS, memory_gb=0))
    assert mem.in_memory and not streamed.in_memory and not streamed.features
    for s in STREAMS:
        np.testing.assert_allclose(mem.normalizer.mean[s], streamed.normalizer.mean[s], rtol=1e-5, atol=1e-6)
    for a, b in zip(mem.batches("dev", 3), streamed.batches("dev", 3), strict=True):
        assert a.ids == b.ids
        for s in STREAMS:
            torch.testing.assert_close(a.inputs[s], b.inputs[s], rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    seen = [i for b in streamed.batches("train", 4, shuffle=True, generator=g) for i in b.ids]
    assert sorted(seen) == sorted(streamed.ids[streamed.indices("train")])


def test_unpaired_samples_flow_through_and_train(demo_store: Path, tmp_path: Path) -> None:
    data = FusionData(open_store(demo_store), DataConfig(streams=STREAMS))
    train_idx = data.indices("train")
    for i in train_idx[::2]:
        data.features["video/mobilenetv2"][i] = None  # audio-only clips, as VAVL trains on
    batch = data.collate(train_idx[:2])
    assert batch.present["video/mobilenetv2"].tolist() == [False, True]
    assert not batch.masks["video/mobilenetv2"][0].any()
    trainer = Trainer(config(demo_store, "late"), tmp_path)
    trainer.data.features["video/mobilenetv2"] = data.features["video/mobilenetv2"]
    trainer.fit()
    losses = [h["train_task"] for h in trainer.history]
    assert all(np.isfinite(losses))
    out = trainer.model(trainer.data.collate(train_idx[:2]))
    assert out.fusion_weights[0].tolist() == pytest.approx([1.0, 0.0])  # a missing stream weighs 0


# -- methods and trainer -------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SMALL_BY_METHOD))
@pytest.mark.parametrize(
    ("task", "labels"), [("multiclass", "av"), ("multilabel", "av"), ("regression", "valence,arousal")]
)
def test_every_baseline_trains_every_task(
    demo_store: Path, tmp_path: Path, method: str, task: str, labels: str
) -> None:
    streams = STREAMS[:1] if METHODS.get(method).max_streams == 1 else STREAMS
    cfg = config(
        demo_store, method, data=DataConfig(streams=streams, labels=labels, task=task, align="rate:10")
    )
    m = train(cfg, tmp_path)
    key = {"multiclass": "macro_f1", "multilabel": "micro_f1", "regression": "ccc"}[task]
    assert np.isfinite(m["test"][key]) and set(m["test"]["per_stream"]) == set(streams)
    for h in m["history"]:  # methods name their loss terms (VAVL: task_audio, rec_audio, ...)
        terms = {k: v for k, v in h.items() if k.startswith("train_")}
        assert any(k.startswith("train_task") for k in terms) and all(np.isfinite(list(terms.values())))
    size = m["complexity"]
    assert size["parameters"] > 0 and size["latency_ms_per_clip"] > 0 and size["latency_clips"] >= 1
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert set(preds["split"]) == {"dev", "test"} and len(preds) == m["dev"]["n"] + m["test"]["n"]


def test_three_streams(layered_store: Path, tmp_path: Path) -> None:
    three = DataConfig(streams=(*STREAMS, "audio/layered@0"), align="rate:10")
    for method in ("mult", "context", "late", "early"):
        m = train(config(layered_store, method, data=three, epochs=1), tmp_path / method)
        assert len(m["streams"]) == 3 and np.isfinite(m["test"]["macro_f1"])
    with pytest.raises(Exception, match=r"tav takes 2 streams"):
        train(config(layered_store, "tav", data=three), tmp_path / "tav")


def test_per_frame_targets_train_and_predict_per_frame_weights(demo_store: Path, tmp_path: Path) -> None:
    cases = [
        ("mult", "regression", "valence"),
        ("context", "multiclass", "arousal"),
        ("late", "regression", "valence,arousal"),
    ]
    for method, task, labels in cases:
        data = DataConfig(streams=STREAMS, labels=labels, task=task, level="frame")
        weights = "inverse" if task == "multiclass" else "none"
        m = train(config(demo_store, method, data=data, class_weights=weights), tmp_path / method)
        assert m["frame_level"] and m["test"]["n"] > m["n_samples"]["test"]  # scored per frame
    out = predict_run(tmp_path / "late")
    frames = np.load(out / "frames.npz")
    store = open_store(demo_store)
    row = {sid: i for i, sid in enumerate(store.sample_ids)}
    ids = {k.split("/")[0] for k in frames.files} - {"_meta"}
    assert len(ids) == m["n_samples"]["train"] + m["n_samples"]["dev"] + m["n_samples"]["test"]
    for sid in list(ids)[:5]:
        w = frames[f"{sid}/fusion_weights"]
        assert w.shape == (len(store.continuous.times[row[sid]]), 2)  # one row per label frame
        np.testing.assert_allclose(w.sum(1), 1, atol=1e-5)
    pred = pd.read_csv(out / "predictions.csv")
    assert {"frame", "value:valence", "audio/mfcc:arousal"} <= set(pred.columns)


@pytest.mark.slow
def test_training_is_reproducible_and_resumes_bit_identically(demo_store: Path, tmp_path: Path) -> None:
    cfg = config(demo_store, "late", epochs=4, scheduler="cosine-restarts", class_weights="inverse")
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    c = train(replace(cfg, seed=1), tmp_path / "c")
    assert a["history"][-1]["train_task"] == b["history"][-1]["train_task"] and a["test"] == b["test"]
    assert a["history"][-1]["train_task"] != c["history"][-1]["train_task"]
    d = crash_then_resume(cfg, tmp_path / "d", epoch=2)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(d["history"]) == strip(a["history"]) and d["test"] == a["test"]
    sa = load_tensors(tmp_path / "a" / "model.safetensors")
    sd = load_tensors(tmp_path / "d" / "model.safetensors")
    assert all(torch.equal(sa[k], sd[k]) for k in sa)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["seed"] == 0 and saved["stream_provenance"]["video/mobilenetv2"]["weights"] == "random-init"


def test_model_selection_never_reads_test(demo_store: Path, tmp_path: Path) -> None:
    """Scrambling every test label changes nothing before the final test report."""

    def shift(values: np.ndarray, rows: np.ndarray, n_classes: int) -> None:
        values[rows] = (values[rows] + 1) % n_classes

    assert_selection_ignores_test(config(demo_store, "context", epochs=3), tmp_path, shift)


def test_optimisers_schedules_sampling_and_early_stopping(demo_store: Path, tmp_path: Path) -> None:
    sched = Schedule(config(demo_store, scheduler="cosine-restarts", t0=1, t_mult=2), {})
    assert [sched.factor(e) for e in (0, 1, 3, 7)] == pytest.approx([1, 1, 1, 1])  # restarts
    assert sched.factor(2) == pytest.approx(0.5) and sched.factor(0.5) == pytest.approx(0.5)
    warm = Schedule(config(demo_store, scheduler="warmup-cosine", warmup=2, epochs=10), {})
    assert warm.factor(1) == pytest.approx(0.5, abs=1e-3) and warm.factor(10) == pytest.approx(0)
    assert Schedule(config(demo_store, scheduler="step", step_size=2, gamma=0.5), {}).factor(5) == 0.25
    m = train(
        config(demo_store, "late", epochs=6, optimizer="sgd", lr=1e-5, patience=1, sampling="over"), tmp_path
    )
    assert len(m["history"]) < 6  # a tiny learning rate stalls dev, early stopping ends the run
    trainer = Trainer(config(demo_store, "late", sampling="under"), tmp_path / "u")
    y = [
        int(t)
        for b in trainer.data.batches(
            "train", 64, generator=trainer.gen, sample_weights=trainer.sample_weights
        )
        for t in b.targets
    ]
    counts = np.bincount(y, minlength=6)
    assert (
        len(set(counts[counts > 0])) <= 3
        and len(y) == trainer.sample_weights[trainer.data.indices("train")].sum()
    )


def test_tensorboard_logging(demo_store: Path, tmp_path: Path) -> None:
    train(config(demo_store, "late", epochs=1, tensorboard=True), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


# -- evaluation ----------------------------------------------------------------------------


def test_perturbations(demo_store: Path) -> None:
    data = FusionData(open_store(demo_store), DataConfig(streams=STREAMS))
    batch = data.collate(data.indices("train")[:4])
    g = torch.Generator().manual_seed(0)
    gone = Perturbation("missing", ("video/mobilenetv2",)).apply(batch, g)
    assert not gone.present["video/mobilenetv2"].any() and not gone.masks["video/mobilenetv2"].any()
    zeros = Perturbation("missing", ("video/mobilenetv2",), policy="zeros").apply(batch, g)
    assert zeros.present["video/mobilenetv2"].all() and (zeros.inputs["video/mobilenetv2"] == 0).all()
    x, m = batch.inputs["audio/mfcc"], batch.masks["audio/mfcc"]
    noisy = Perturbation("noise", ("audio/mfcc",), snr=10.0).apply(batch, g).inputs["audio/mfcc"]
    ratio = (x[m] ** 2).mean() / ((noisy - x)[m] ** 2).mean()
    assert 10 * torch.log10(ratio).item() == pytest.approx(10, abs=1.0)
    masked = Perturbation("mask", ("audio/mfcc",), p=0.3).apply(batch, g).inputs["audio/mfcc"]
    dropped = ((masked == 0).all(-1) & m).sum() / m.sum()
    assert dropped.item() == pytest.approx(0.3, abs=0.05)


@pytest.mark.slow
def test_cli_train_eval_predict_compare_trials(demo_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = [
        "--store",
        demo_store,
        "--streams",
        ",".join(STREAMS),
        "--epochs",
        "2",
        "--set",
        "hidden=16",
        "--set",
        "layers=1",
    ]
    proc = run_avx(
        "fuse", "train", "--method", "context", "--out", run, *common, "--scheduler", "cosine-restarts"
    )
    assert {
        "metrics.json",
        "config.json",
        "model.json",
        "model.safetensors",
        "predictions.csv",
    } <= {p.name for p in run.iterdir()}
    assert not (run / "checkpoint").exists()  # removed once the run finished (--keep-checkpoint keeps it)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == "speaker-trials" and metrics["task"] == "multiclass"
    assert {"macro_f1", "ece", "brier", "ci95", "fairness"} <= set(metrics["test"])
    assert {"sex", "race", "age_group"} == set(metrics["test"]["fairness"])
    assert metrics["calibration"]["ece_before"] >= 0 and "context" in proc.stdout

    settings = ["--settings", "av,a,v,mean", "--noise", "video", "--mask-frames", "0.5", "--occlude", "0.5"]
    ev = run_avx("fuse", "eval", run, *settings)
    table = pd.read_csv(run / "eval.csv").set_index("setting")
    sfav = ["AV", "A (video missing)", "V (audio missing)", "M (mean of AV, A, V)"]
    assert list(table.index[:4]) == sfav and "occlude 0.5 of faces" in table.index
    assert table.loc[sfav[3], "accuracy"] == pytest.approx(table.loc[sfav[:3], "accuracy"].mean())
    ev_json = json.loads((run / "eval.json").read_text())
    assert "ece_after" in ev_json["calibration"] and "ECE" in ev.stdout
    again = run_avx("fuse", "eval", run, *settings)
    assert again.stdout == ev.stdout  # perturbations are seeded

    run_avx("fuse", "predict", run, "--out", tmp_path / "pred")
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert {"audio/mfcc:anger", "video/mobilenetv2:anger", "prob:anger"} <= set(pred.columns)
    assert set(pred["split"]) >= {"train", "dev", "test"}

    late = tmp_path / "late"
    run_avx("fuse", "train", "--method", "late", "--out", late, *common)
    assert "weight:video/mobilenetv2" in pd.read_csv(late / "predictions.csv").columns
    trials = tmp_path / "trials"
    run_avx("fuse", "train", "--method", "late", "--out", trials, *common, "--trials", "2")
    summary = json.loads((trials / "trials.json").read_text())
    assert summary["folds"] == [0, 1] and len(summary["per_fold"]["macro_f1"]) == 2
    assert "| macro_f1 |" in (trials / "trials.md").read_text()
    cmp = run_avx("fuse", "compare", trials, late)
    assert "p_vs_first" in cmp.stdout and "late" in cmp.stdout
    assert "nan" not in cmp.stdout and "needs ≥ 2 trials" in cmp.stdout  # the single run's std
    bad = run_avx(
        "fuse",
        "train",
        "--method",
        "late",
        "--out",
        tmp_path / "x",
        "--store",
        demo_store,
        "--streams",
        "audio/wavlm",
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown stream 'audio/wavlm'")
    valid = bad.stderr.strip().split("valid: ")[1].split(", ")
    assert "audio/mfcc" in valid and "faces" not in valid  # only streams that can be trained on
    methods = run_avx("fuse", "methods").stdout
    assert all(m in methods for m in METHODS.names())


def test_protocol_and_fold_select_the_split(demo_store: Path) -> None:
    store = open_store(demo_store)
    folds = [FusionData(store, DataConfig(streams=STREAMS, fold=k)) for k in (0, 1)]
    speakers = store.samples.set_index("id")["speaker"]
    for d in folds:
        test_spk = set(speakers[d.ids[d.split == "test"]])
        assert test_spk and not test_spk & set(speakers[d.ids[d.split == "train"]])
    assert not np.array_equal(folds[0].split, folds[1].split)
    with pytest.raises(Exception, match="unknown protocol 'official'"):
        FusionData(store, DataConfig(streams=STREAMS, protocol="official"))


@pytest.mark.slow
def test_occlusion_rebuilds_the_backbone_with_its_recorded_options(
    demo_store: Path, demo_corpus: Path, tmp_path: Path
) -> None:
    """A stream extracted with ``--opt color=sfav`` is rebuilt from its provenance with
    that option (BGR/255 input), so it can be occluded; the name alone would rebuild the
    RGB-normalised extractor, which the re-encoding guard rightly refuses."""
    from avx.extract.backbones import create_backbone
    from avx.fuse.occlusion import occluded_data

    store = tmp_path / "s.zarr"
    shutil.copytree(demo_store, store)
    run_avx(
        "extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store,
        "--backbone", "efficientface", "--weights", "none", "--opt", "color=sfav", "--dtype", "float32",
        "--fps", "5", "--min-face-size", "40",
    )  # fmt: skip
    prov = open_store(store).stream("video/efficientface").provenance
    assert prov["options"] == {"color": "sfav"} and prov["config"]["color"] == "BGR"
    rebuilt = create_backbone(prov)
    assert rebuilt.preprocess.color == "BGR" and rebuilt.provenance()["preprocess"] == prov["preprocess"]
    plain = create_backbone("efficientface", weights="none")
    assert plain.preprocess.color == "RGB"

    streams = ("audio/mfcc", "video/efficientface")
    data = FusionData(open_store(store), DataConfig(streams=streams))
    occluded = occluded_data(data, 0.5, "test")
    video, audio = "video/efficientface", "audio/mfcc"
    test = data.indices("test")
    assert any(not np.array_equal(occluded.features[video][i], data.features[video][i]) for i in test)
    assert all(np.array_equal(occluded.features[audio][i], data.features[audio][i]) for i in test)
