"""The two-stage method (paper 002): LW-Sum, AS-Pool, stages, label sources, class-balanced
multi-label loss, the grid presets, and the paper's tables (fairness against fairlearn)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import f1_score

from avx.corpora import load_corpus
from avx.corpora.protocols import official
from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse import tables as T
from avx.fuse.data import Batch, DataConfig, FusionData, StreamInfo
from avx.fuse.layers import AttentiveStatsPool
from avx.fuse.methods import create_method
from avx.fuse.methods.base import LayerMix, TaskSpec, _LayerSum
from avx.fuse.methods.twostage import parse_stage1
from avx.fuse.presets import GRID_ROWS, apply_preset
from avx.fuse.tasks import Objective, class_weights
from avx.fuse.train import TrainConfig, Trainer, make_objective, train
from avx.serialization import load_tensors
from avx.store_schema import StreamSpec, StreamWriter, create_store, open_store
from tests.conftest import FIXTURES, crash_then_resume, run_avx

STREAMS = ("audio/mfcc", "video/mobilenetv2")
TINY = {"d_model": 16, "ff_dim": 16, "heads": 2, "audio_layers": 1, "video_layers": 1, "shared_layers": 1}
SOFT_ML = {"task": "multilabel", "soft_targets": True, "labels": "av"}


def _config(store: Path, *, epochs: int = 2, data: dict | None = None, **method: object) -> TrainConfig:
    return TrainConfig(
        store=str(store),
        method="twostage",
        data=DataConfig(streams=STREAMS, **{**SOFT_ML, **(data or {})}),
        epochs=epochs,
        batch_size=8,
        lr=1e-3,
        class_weights="effective",
        bootstrap=0,
        method_config={**TINY, **method},
    )


# -- LW-Sum and AS-Pool ----------------------------------------------------------------------


def test_lw_sum_is_a_softmax_starting_uniform_and_materialises_no_layer_copies() -> None:
    mix = LayerMix(25)
    x = torch.randn(2, 30, 25, 64, requires_grad=False)
    w = torch.softmax(mix.weights, 0)
    assert w.sum().item() == pytest.approx(1.0) and torch.allclose(w, torch.full((25,), 1 / 25))
    np.testing.assert_allclose(mix(x).detach(), x.mean(2), rtol=1e-5, atol=1e-6)  # uniform: the mean
    # Forward and backward allocate nothing of the input's [B, T, 25, D] size: no per-layer
    # copies (a broadcast product x * w would allocate one whole extra input).
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = mix(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in big)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        out = mix(x)
        out.sum().backward()
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    assert allocated < x.numel() * x.element_size() / 4
    assert mix.weights.grad is not None and mix.weights.grad.abs().sum() > 0
    # the same values and gradients as the plain formula, checked numerically too
    w = torch.softmax(torch.randn(25), 0).requires_grad_()
    mix.weights.data = w.detach().log()
    torch.testing.assert_close(mix(x), torch.einsum("btld,l->btd", x, w), rtol=1e-5, atol=1e-5)
    x64, w64 = torch.randn(2, 3, 4, 5, dtype=torch.double), torch.rand(4, dtype=torch.double)
    assert torch.autograd.gradcheck(_LayerSum.apply, (x64.requires_grad_(), w64.requires_grad_()))


def test_attentive_stats_pool_matches_a_hand_computation_and_ignores_padding() -> None:
    torch.manual_seed(0)
    pool = AttentiveStatsPool(3, hidden=2)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    out = pool(x, mask)
    W, b, a = pool.proj.weight.detach(), pool.proj.bias.detach(), pool.query.detach()
    for i, n in enumerate((3, 2)):
        xi = x[i, :n]
        e = torch.tanh(xi @ W.T + b) @ a
        w = torch.exp(e) / torch.exp(e).sum()
        mu = (w[:, None] * xi).sum(0)
        sigma = torch.sqrt(torch.clamp((w[:, None] * xi**2).sum(0) - mu**2, min=1e-5))
        torch.testing.assert_close(out[i], torch.cat([mu, sigma]), rtol=1e-5, atol=1e-6)
    changed = x.clone()
    changed[0, 3] = 100.0
    changed[1, 2:] = -50.0
    torch.testing.assert_close(pool(changed, mask), out)
    empty = pool(x, torch.zeros(2, 4, dtype=torch.bool))  # an absent modality pools to zeros
    assert (empty == 0).all()


# -- the model and its stages --------------------------------------------------------------------


def test_branch_plan_follows_the_stage1_labels_and_every_branch_has_its_own_lw_sum() -> None:
    info = {"audio/w": StreamInfo(8, layers=25), "video/m": StreamInfo(12, modality="video")}
    m = create_method("twostage", info, TaskSpec("multilabel", 6), **TINY)
    assert [src for _, src in m.plan.values()] == ["voice", "av", "face", "av"]
    assert parse_stage1("audio=voice+av, video=face") == {"audio": ["voice", "av"], "video": ["face"]}
    assert type(m).label_sources(m.config) == ("voice", "av", "face")
    assert list(m.layer_mix) == ["audio__w__0_voice", "audio__w__1_av"]  # one LW-Sum per branch
    one = create_method("twostage", info, TaskSpec("multilabel", 6), **TINY, stages=1)
    assert len(one.plan) == 2 and one.stages() == ("",) and type(one).label_sources(one.config) == ()
    with pytest.raises(Exception, match="name no source for text/t"):
        create_method("twostage", {"text/t": StreamInfo(4, modality="text")}, TaskSpec("multilabel", 6))
    with pytest.raises(Exception, match="MODALITY=SOURCE"):
        parse_stage1("audio:voice")


def test_stage_two_leaves_every_stage_one_parameter_bit_identical(
    layered_store: Path, tmp_path: Path
) -> None:
    cfg = _config(layered_store)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, streams=("audio/layered@all", STREAMS[1]))
    )
    trainer = Trainer(cfg, tmp_path)
    model = trainer.model
    # the all-layer stream (conftest's layered_store) is read once per clip as [frames, 3, 8], batched as is
    i = trainer.data.indices("train")[0]
    assert trainer.data.features["audio/layered"][i].shape[1:] == (3, 8)
    assert trainer.data.collate(np.array([i])).inputs["audio/layered"].shape[2:] == (3, 8)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit()
    stage1 = load_tensors(tmp_path / "stage-1" / "model.safetensors")
    final = model.state_dict()
    unimodal = [k for k in initial if k.startswith(("layer_mix.", "branches.", "heads."))]
    joint = [k for k in initial if k.startswith(("shared.", "pools.", "fc."))]
    assert unimodal and joint and len(unimodal) + len(joint) == len(initial)
    for k in unimodal:  # stage 2 never touched them
        assert torch.equal(final[k], stage1[k]), k
    for k in joint:  # stage 1 never touched the shared part
        assert torch.equal(stage1[k], initial[k]), k
    assert any(not torch.equal(stage1[k], initial[k]) for k in unimodal)  # stage 1 trained
    assert any(not torch.equal(final[k], stage1[k]) for k in joint)  # stage 2 trained
    mixes = [k for k in unimodal if k.startswith("layer_mix.")]
    assert len(mixes) == 2  # one LW-Sum per acoustic branch, trained from the cached layers
    assert all(not torch.equal(stage1[k], torch.zeros(3)) for k in mixes)
    stage = json.loads((tmp_path / "stage-1" / "stage.json").read_text())
    assert stage["select_metric"] == "loss" and 1 <= stage["selected_epoch"] <= 2
    rows = trainer.history
    assert [r["stage"] for r in rows] == ["1", "1", "2", "2"]
    assert {k for k in rows[0] if k.startswith("train_task_")} == {f"train_task_{b}" for b in model.plan}
    assert all(p.requires_grad for p in model.parameters())  # trained: nothing left frozen


@pytest.mark.slow
def test_two_stage_run_resumes_in_stage_two_and_ends_bit_identical(demo_store: Path, tmp_path: Path) -> None:
    cfg = _config(demo_store)
    ref = train(cfg, tmp_path / "ref")
    # the first epoch of stage 2 is checkpointed, then the run dies; stage 1 is kept
    resumed = crash_then_resume(cfg, tmp_path / "run", epoch=3)
    assert (tmp_path / "run" / "stage-1" / "model.safetensors").exists()
    assert resumed["test"] == ref["test"] and resumed["stages"] == ref["stages"]
    a = load_tensors(tmp_path / "ref" / "model.safetensors")
    b = load_tensors(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- label sources on the real CREMA-D metadata -------------------------------------------------


@pytest.fixture(scope="module")
def cremad_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real metadata of actors 1001-1003 (tests/fixtures/cremad), one actor per split,
    and a 4-D stand-in feature stream so the data layer can batch it."""
    meta = load_corpus("cremad", FIXTURES / "cremad")
    actor = meta.samples["id"].str[:4].to_numpy()
    split = np.select([actor == "1001", actor == "1002"], ["train", "dev"], "test")
    meta = dataclasses.replace(meta, protocols={"official": official(list(split), source="by actor")})
    path = tmp_path_factory.mktemp("cremad") / "c.zarr"
    create_store(path, meta)
    w = StreamWriter(
        zarr.open_group(str(path), mode="r+"),
        StreamSpec("audio/x", (4,), "float32", 10.0, provenance={"backbone": "test"}),
        part_size=64,
    )
    for row in range(len(meta.samples)):
        w.add(row, np.ones((3, 4), np.float32), np.arange(3) / 10.0)
    w.close()
    return path


def test_stage_targets_are_each_clips_voice_face_and_av_vote_distributions(cremad_store: Path) -> None:
    votes = pd.read_csv(FIXTURES / "cremad" / "processedResults" / "tabulatedVotes.csv", index_col=0)
    codes = ["A", "D", "F", "H", "N", "S"]

    def distribution(query: int, clip: str) -> np.ndarray:  # row id = 100000 * queryType + clip number
        rows = votes[(votes.index // 100000 == query) & (votes["fileName"] == clip)]
        counts = rows[codes].to_numpy(float)[0]
        return counts / counts.sum()

    cfg = DataConfig(streams=("audio/x",), labels="av", task="multilabel", soft_targets=True)
    data = FusionData(open_store(cremad_store), dataclasses.replace(cfg, extra_labels=("voice", "face")))
    batch = data.collate(np.arange(len(data.ids)))
    checked = 0
    for j, clip in enumerate(batch.ids):
        np.testing.assert_allclose(batch.targets[j], distribution(3, clip), rtol=1e-6)  # stage 2: AV
        for source, query in (("voice", 1), ("face", 2)):  # stage 1: voice-only, face-only
            if batch.extra_masks[source][j]:
                np.testing.assert_allclose(
                    batch.extra_targets[source][j], distribution(query, clip), rtol=1e-6
                )
                checked += 1
    assert checked > len(batch.ids)  # both unimodal sources for most clips
    # the method asks for exactly those sources and its stage-1 loss reads them
    trainer_cfg = TrainConfig(store=str(cremad_store), method="twostage", data=cfg, method_config=TINY)
    objective = make_objective(trainer_cfg, FusionData(open_store(cremad_store), dataclasses.replace(
        cfg, extra_labels=("voice", "face", "av"))))  # fmt: skip
    assert objective.labels("av") is objective and objective.labels("voice").source == "voice"
    with pytest.raises(Exception, match="label source 'anger'"):
        objective.labels("anger")


def test_class_balanced_bce_weights_each_sample_by_its_expected_class_weight() -> None:
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]])
    beta = 0.9
    counts = y.sum(0).astype(float)
    eff = (1 - beta) / (1 - beta**counts)
    want_w = eff / eff.sum() * 3  # Cui et al.: normalised to sum to the number of classes
    w = class_weights(y, 3, f"effective:{beta}")
    np.testing.assert_allclose(w, want_w, rtol=1e-6)
    dist = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])
    scores = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.3, -0.4]])
    batch = Batch(["a", "b"], np.arange(2), {}, {}, {}, dist, torch.ones(2, dtype=torch.bool))
    loss = Objective("multilabel", torch.as_tensor(w, dtype=torch.float32))(scores, batch, None)
    alpha = (dist.numpy() * w).sum(1) / dist.numpy().sum(1)
    bce = -(dist * torch.log(torch.sigmoid(scores)) + (1 - dist) * torch.log(1 - torch.sigmoid(scores)))
    assert loss.item() == pytest.approx(float((bce.numpy() * alpha[:, None]).mean()), rel=1e-5)


# -- the grid ------------------------------------------------------------------------------------


def test_grid_presets_are_the_papers_twelve_rows(demo_store: Path) -> None:
    base = TrainConfig(store=str(demo_store), method="", data=DataConfig(streams=STREAMS))
    rows = {n: apply_preset(base, f"twostage-grid:{n}") for n in range(1, 13)}
    assert all(r.method == "twostage" and r.optimizer == "adamw" and r.lr == 1e-5 for r in rows.values())
    assert all(
        r.data.task == "multilabel" and r.data.soft_targets and r.data.labels == "av" for r in rows.values()
    )
    assert [r.data.modalities for r in rows.values()] == [("audio",)] * 3 + [("video",)] * 3 + [()] * 6
    assert [r.data.train_labels for r in rows.values()][:9] == ["voice", "face", "av"] * 3
    assert [r.method_config["stages"] for r in rows.values()] == [1] * 9 + [2] * 3
    assert [r.method_config["stage1"] for r in list(rows.values())[9:]] == [
        "audio=av+av,video=av+av",
        "audio=voice+voice,video=face+face",
        "audio=voice+av,video=face+av",
    ]
    assert len(GRID_ROWS) == 12
    one = FusionData(open_store(demo_store), rows[4].data)
    assert one.stream_names == ["video/mobilenetv2"]


def test_train_labels_train_the_loss_and_leave_scoring_to_labels(demo_store: Path, tmp_path: Path) -> None:
    cfg = _config(demo_store, epochs=1, data={"train_labels": "voice"}, stages=1)
    trainer = Trainer(cfg, tmp_path)
    assert trainer.objective.source == "voice" and trainer.data.extra_targets.keys() == {"voice"}
    batch = trainer.data.collate(trainer.data.indices("train")[:4])
    voice = open_store(demo_store).labels["voice"].distribution[trainer.data.rows[batch.index]]
    np.testing.assert_allclose(batch.extra_targets["voice"], np.nan_to_num(voice), rtol=1e-6)
    scores = torch.zeros(4, 6)
    want = Objective("multilabel", trainer.objective.weights, source="voice")(scores, batch, None)
    assert trainer.objective(scores, batch, None).item() == pytest.approx(want.item())
    trainer.fit()
    assert trainer.finish(0.0)["labels"] == "av"


# -- the tables ----------------------------------------------------------------------------------


def test_group_tables_equal_fairlearn_on_the_runs_predictions(demo_store: Path, tmp_path: Path) -> None:
    train(_config(demo_store, epochs=1, stages=1), tmp_path)
    r = T.pooled_test(tmp_path)
    preds = pd.read_csv(tmp_path / "predictions.csv").query("split == 'test'")
    assert len(r.y) == len(preds) and r.y.shape[1] == 6
    samples = open_store(demo_store).samples.set_index("id")
    sex = samples.loc[preds["id"], "sex"].astype(str).to_numpy()
    _, numbers = T.group_table({"run": tmp_path}, "sex", n_boot=50)
    row = numbers.iloc[0]
    dpd = np.mean(
        [demographic_parity_difference(r.y[:, c], r.pred[:, c], sensitive_features=sex) for c in range(6)]
    )
    eod = np.mean(
        [equalized_odds_difference(r.y[:, c], r.pred[:, c], sensitive_features=sex) for c in range(6)]
    )
    assert row["dpd"] == pytest.approx(dpd) and row["eod"] == pytest.approx(eod)
    per = {
        g: f1_score(r.y[sex == g], r.pred[sex == g], average="macro", zero_division=0) for g in np.unique(sex)
    }
    for g, v in per.items():
        assert row[g] == pytest.approx(v)
    pairs = [abs(a - b) for a, b in itertools.combinations(per.values(), 2)]
    assert row["f1_bias"] == pytest.approx(np.mean(pairs) if pairs else 0.0)
    shown, _ = T.per_class_table({"run": tmp_path}, n_boot=50)
    f1 = f1_score(r.y, r.pred, average=None, zero_division=0)
    assert [float(shown.iloc[0][n].split()[0]) for n in r.names] == pytest.approx(np.round(f1, 3))


def test_bootstrap_intervals_equal_per_replicate_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(int)
    p = np.where(rng.random((n, 4)) < 0.7, y, 1 - y)
    groups = rng.choice(["f", "m", "x"], n)
    draws = [np.random.default_rng(3).integers(0, n, n)]
    rng3 = np.random.default_rng(3)
    reps = [rng3.integers(0, n, n) for _ in range(100)]
    wf1 = [f1_score(y[d], p[d], average="weighted", zero_division=0) for d in reps]
    got = M.bootstrap_scorer("weighted_f1", y, p, np.arange(n), n, n_boot=100, seed=3)
    assert got == pytest.approx(M.percentile_interval(np.array(wf1)), abs=1e-9)
    per_class = np.array([f1_score(y[d], p[d], average=None, zero_division=0) for d in reps])
    cis = M.bootstrap_per_class_f1(y, p, 4, n_boot=100, seed=3)
    for c in range(4):
        assert cis[c] == pytest.approx(M.percentile_interval(per_class[:, c]), abs=1e-9)
    by_group, bias = M.bootstrap_groups("macro_f1", y, p, groups, n_boot=100, seed=3)
    scores = {g: [] for g in "fmx"}
    biases = []
    for d in reps:
        s = {
            g: f1_score(y[d][groups[d] == g], p[d][groups[d] == g], average="macro", zero_division=0)
            for g in "fmx"
        }
        for g in "fmx":
            scores[g].append(s[g])
        biases.append(M.f1_bias(list(s.values())))
    for g in "fmx":
        assert by_group[g] == pytest.approx(M.percentile_interval(np.array(scores[g])), abs=1e-9)
    assert bias == pytest.approx(M.percentile_interval(np.array(biases)), abs=1e-9)
    assert draws  # the same replicates as bootstrap_ci draws


@pytest.mark.slow
def test_cli_two_stage_run_eval_groups_and_paper_tables(demo_store: Path, tmp_path: Path) -> None:
    common = ["--store", demo_store, "--streams", ",".join(STREAMS), "--epochs", "1", "--lr", "1e-3"]
    small = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    run_avx(
        "fuse", "train", "--preset", "twostage-paper", "--labels-stage1", "audio=voice+av,video=face+av",
        *common, *small, "--out", tmp_path / "p",
    )  # fmt: skip
    run_avx("fuse", "train", "--preset", "twostage-grid:4", *common, *small, "--out", tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    assert cfg["data"]["modalities"] == ["video"] and cfg["data"]["train_labels"] == "voice"
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["streams"] == ["video/mobilenetv2"]
    proc = run_avx("fuse", "eval", tmp_path / "p", "--groups", "sex,race,age")
    assert "macro-F1 bias" in proc.stdout and (tmp_path / "p" / "groups-race.csv").exists()
    proc = run_avx(
        "fuse", "compare", tmp_path / "v", tmp_path / "p", "--tables", "--names", "4,12", "--reference", "12",
        "--groups", "sex", "--bootstrap", "100", "--out", tmp_path / "tables",
    )  # fmt: skip
    results = pd.read_csv(tmp_path / "tables" / "results.csv")
    assert list(results["model"]) == [4, 12] and {"macro_f1", "weighted_f1 lo"} <= set(results.columns)
    assert list(results["inputs"]) == ["video", "audio+video"]
    assert list(results["trained on"]) == ["voice", "audio=voice+av,video=face+av -> av"]
    assert (tmp_path / "tables" / "classes.md").exists() and "| 12 |" in proc.stdout
    shutil.rmtree(tmp_path / "tables")


def test_results_table_scores_pooled_folds_with_intervals_and_fold_t_tests(
    demo_store: Path, tmp_path: Path
) -> None:
    from avx.fuse.robustness import paired_t_test
    from avx.fuse.runs import run_trials

    for name, labels in (("a", "av"), ("b", "voice")):
        run_trials(_config(demo_store, epochs=1, data={"train_labels": labels}, stages=1), tmp_path / name, 2)
    shown, numbers = T.results_table({"A": tmp_path / "a", "B": tmp_path / "b"}, reference="A", n_boot=200)
    b = T.pooled_test(tmp_path / "b")
    assert len(b.y) == sum(
        len(pd.read_csv(tmp_path / "b" / f"fold-{k}" / "predictions.csv").query("split == 'test'"))
        for k in (0, 1)
    )
    row = numbers.set_index("model").loc["B"]
    assert (row["inputs"], row["trained on"]) == ("audio+video", "voice")  # Table 1's Audio/Video/Elicited
    assert row["macro_f1"] == pytest.approx(f1_score(b.y, b.pred, average="macro", zero_division=0))
    assert row["weighted_f1"] == pytest.approx(f1_score(b.y, b.pred, average="weighted", zero_division=0))
    lo, hi = M.bootstrap_scorer("macro_f1", b.y, b.pred, np.arange(len(b.y)), len(b.y), n_boot=200, seed=0)
    assert (row["macro_f1 lo"], row["macro_f1 hi"]) == pytest.approx((lo, hi))
    folds = {k: json.loads((tmp_path / k / "trials.json").read_text())["per_fold"]["macro_f1"] for k in "ab"}
    assert row["macro_f1 p"] == pytest.approx(
        paired_t_test(np.array(folds["b"]), np.array(folds["a"])), nan_ok=True
    )
    assert np.isnan(numbers.set_index("model").loc["A", "macro_f1 p"])  # the reference itself
    assert shown.loc[1, "mF1"].startswith(f"{row['macro_f1']:.3f} (")
    with pytest.raises(Exception, match="reference 'C'"):
        T.results_table({"A": tmp_path / "a"}, reference="C")


@pytest.mark.parametrize("method", ["vavl", "conformer-uni"])
def test_attentive_statistics_pooling_is_selectable_by_other_methods(method: str) -> None:
    info = {"audio/a": StreamInfo(5), "video/v": StreamInfo(7, modality="video")}
    if method == "conformer-uni":
        info.pop("video/v")
    small = {"d_model": 16, "heads": 2, "conv_kernel": 5}
    mean = create_method(method, info, TaskSpec("multiclass", 3), **small)
    asp = create_method(method, info, TaskSpec("multiclass", 3), **small, pool="asp")
    assert not any(isinstance(m, AttentiveStatsPool) for m in mean.modules())
    assert sum(isinstance(m, AttentiveStatsPool) for m in asp.modules()) == len(info)
    batch = Batch(
        ["x", "y"],
        np.arange(2),
        {s: torch.randn(2, 6, i.dim) for s, i in info.items()},
        {s: torch.ones(2, 6, dtype=torch.bool) for s in info},
        {s: torch.ones(2, dtype=torch.bool) for s in info},
        torch.tensor([0, 2]),
        torch.ones(2, dtype=torch.bool),
    )
    assert asp(batch).logits.shape == (2, 3)
    with pytest.raises(AvxError, match="unknown pooling 'max'"):
        create_method(method, info, TaskSpec("multiclass", 3), **small, pool="max")


def test_one_stage_models_have_heads_only_where_something_trains_them() -> None:
    info = {"audio/a": StreamInfo(5), "video/v": StreamInfo(7, modality="video")}
    both = create_method("twostage", info, TaskSpec("multilabel", 6), **TINY, stages=1)  # models 7-9
    audio = create_method(
        "twostage", {"audio/a": info["audio/a"]}, TaskSpec("multilabel", 6), **TINY, stages=1
    )
    assert not both.heads and both.joint and len(audio.heads) == 1 and not audio.joint  # models 1-3
    batch = Batch(
        ["x"],
        np.arange(1),
        {"audio/a": torch.randn(1, 4, 5), "video/v": torch.randn(1, 4, 7)},
        {s: torch.ones(1, 4, dtype=torch.bool) for s in info},
        {s: torch.ones(1, dtype=torch.bool) for s in info},
        torch.rand(1, 6),
        torch.ones(1, dtype=torch.bool),
    )
    assert both(batch).modality_logits == {}  # evaluation drops the other stream instead
    out = audio(batch)
    assert torch.equal(out.logits, out.modality_logits["audio/a"])
