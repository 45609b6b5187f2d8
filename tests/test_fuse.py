"""Fusion: data from the store, metrics against scikit-learn, reproducible training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from avx.fuse.data import DataConfig, FusionData
from avx.fuse.metrics import classification_report
from avx.fuse.train import TrainConfig, train
from avx.store_schema import open_store
from tests.conftest import run_avx

STREAMS = ("audio/mfcc", "video/mobilenetv2")


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 6, 200), rng.integers(0, 5, 200)  # class 5 never predicted
    r = classification_report(y, p)
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert r["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert r["unweighted_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert r["n"] == 200


def test_data_labels_padding_and_train_only_normalisation(demo_store: Path) -> None:
    store = open_store(demo_store)
    data = FusionData(store, DataConfig(streams=STREAMS, labels="av"))
    hard = store.labels["av"].hard_labels()
    assert data.n_unlabelled == int((hard < 0).sum())
    assert len(data.ids) == int((hard >= 0).sum())
    train = data.indices("train")
    frames = np.concatenate([data.features["audio/mfcc"][i] for i in train])
    np.testing.assert_allclose(data.normalizer.mean["audio/mfcc"], frames.mean(0), rtol=1e-4, atol=1e-4)
    batch = next(data.batches("dev", 4))
    x, m = batch.inputs["audio/mfcc"], batch.masks["audio/mfcc"]
    lengths = [len(data.features["audio/mfcc"][i]) for i in data.indices("dev")[:4]]
    assert m.sum(1).tolist() == lengths and x.shape[1] == max(lengths)
    assert (x[~m] == 0).all()
    intended = FusionData(store, DataConfig(streams=STREAMS, labels="intended"))
    assert intended.n_unlabelled == 0


def test_missing_stream_flows_through_with_presence_mask(demo_store: Path) -> None:
    data = FusionData(open_store(demo_store), DataConfig(streams=STREAMS))
    i = data.indices("train")[0]
    data.features["video/mobilenetv2"][i] = None  # as for an audio-only clip
    batch = data.collate(np.array([i, data.indices("train")[1]]), data.normalizer)
    assert batch.present["video/mobilenetv2"].tolist() == [False, True]
    assert not batch.masks["video/mobilenetv2"][0].any()


def test_training_is_reproducible_per_seed(demo_store: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(store=str(demo_store), method="late-fusion", data=DataConfig(streams=STREAMS), epochs=4)
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    c = train(TrainConfig(**{**cfg.__dict__, "seed": 1}), tmp_path / "c")
    assert a["history"] == b["history"] and a["test"] == b["test"]
    assert a["history"] != c["history"]
    sa = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    sb = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["selected_epoch"] == a["selected_epoch"] and set(saved["dev"]) >= {"macro_f1", "per_stream"}
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["method_config"]["hidden_size"] == 128 and config["seed"] == 0
    assert config["stream_provenance"]["video/mobilenetv2"]["weights"] == "random-init"


def test_fuse_train_cli(demo_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_avx(
        "fuse", "train", "--store", demo_store, "--method", "late-fusion", "--streams", ",".join(STREAMS),
        "--labels", "av", "--task", "multiclass", "--out", run, "--epochs", "3", "--seed", "0",
        "--set", "hidden_size=32",
    )  # fmt: skip
    assert {p.name for p in run.iterdir()} == {"metrics.json", "config.json", "model.pt"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test"]["macro_f1"] <= 1 and len(metrics["history"]) == 3
    assert json.loads((run / "config.json").read_text())["method_config"]["hidden_size"] == 32
    assert "late-fusion" in proc.stdout and "test" in proc.stdout
    bad = run_avx("fuse", "train", "--store", demo_store, "--method", "late-fusion", "--streams",
                  "audio/wavlm", "--out", tmp_path / "x", check=False)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: unknown stream 'audio/wavlm'; valid: faces, audio/mfcc")


def test_protocol_and_fold_select_the_split(demo_store: Path) -> None:
    store = open_store(demo_store)
    p = store.protocol()
    assert p.name == store.default_protocol == "speaker-trials" and p.n_folds == 5
    folds = [FusionData(store, DataConfig(streams=STREAMS, fold=k)) for k in (0, 1)]
    speakers = store.samples.set_index("id")["speaker"]
    for d in folds:
        test_spk = set(speakers[d.ids[d.split == "test"]])
        assert test_spk and not test_spk & set(speakers[d.ids[d.split == "train"]])
    assert not np.array_equal(folds[0].split, folds[1].split)
    with pytest.raises(Exception, match="unknown protocol 'official'"):
        FusionData(store, DataConfig(streams=STREAMS, protocol="official"))
