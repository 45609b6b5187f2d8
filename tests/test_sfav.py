"""SFAV (paper 001): the fusion variants and baselines, modality dropout, the AV/A/V/M table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avx.errors import AvxError
from avx.fuse.data import Batch, DataConfig, StreamInfo
from avx.fuse.dropout import ModalityDropout
from avx.fuse.methods import METHODS, create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.methods.sfav import AttentionImportance, SfavConfig
from avx.fuse.presets import apply_preset
from avx.fuse.robustness import evaluate_run
from avx.fuse.train import TrainConfig, train
from avx.store_schema import open_store
from tests.conftest import run_avx, synthetic_store

SFAV = sorted(n for n in METHODS.names() if n.startswith("sfav."))
INPUTS = {"audio/a": StreamInfo(10), "video/v": StreamInfo(12, modality="video")}


def _batch(lengths_a: list[int], lengths_v: list[int], fill: float = 0.0, seed: int = 0) -> Batch:
    """Random features; padding holds ``fill`` (models must never read it)."""
    g = torch.Generator().manual_seed(seed)
    n, ta, tv = len(lengths_a), max(lengths_a), max(lengths_v)
    ma = torch.arange(ta) < torch.tensor(lengths_a)[:, None]
    mv = torch.arange(tv) < torch.tensor(lengths_v)[:, None]
    xa = torch.randn(n, ta, 10, generator=g).masked_fill(~ma[..., None], fill)
    xv = torch.randn(n, tv, 12, generator=g).masked_fill(~mv[..., None], fill)
    return Batch(
        ids=[f"s{i}" for i in range(n)],
        index=np.arange(n),
        inputs={"audio/a": xa, "video/v": xv},
        masks={"audio/a": ma, "video/v": mv},
        present={"audio/a": torch.ones(n, dtype=torch.bool), "video/v": torch.ones(n, dtype=torch.bool)},
        targets=torch.arange(n) % 5,
        target_mask=torch.ones(n, dtype=torch.bool),
    )


def _first(b: Batch, k: int = 1) -> Batch:
    """The first ``k`` samples, cut to their own longest real length."""
    ta, tv = int(b.masks["audio/a"][:k].sum(1).max()), int(b.masks["video/v"][:k].sum(1).max())
    return replace(
        b,
        ids=b.ids[:k],
        index=b.index[:k],
        inputs={"audio/a": b.inputs["audio/a"][:k, :ta], "video/v": b.inputs["video/v"][:k, :tv]},
        masks={"audio/a": b.masks["audio/a"][:k, :ta], "video/v": b.masks["video/v"][:k, :tv]},
        present={s: p[:k] for s, p in b.present.items()},
        targets=b.targets[:k],
        target_mask=b.target_mask[:k],
    )


# -- architecture --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SFAV)
def test_variant_shapes_gradients_heads_and_padding(name: str) -> None:
    torch.manual_seed(0)
    model = create_method(name, INPUTS, TaskSpec("multiclass", 5))
    fusion = name.removeprefix("sfav.").rstrip("14")
    heads = 4 if name.endswith("4") else 1
    assert (model.config.fusion, model.config.heads) == (fusion, heads)
    attn = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention | AttentionImportance)]
    assert attn and all(getattr(m, "num_heads", getattr(m, "heads", None)) == heads for m in attn)

    b = _batch([30, 20, 30, 25], [8, 8, 5, 8], fill=7.0)
    out = model(b)
    assert out.logits.shape == (4, 5) and torch.isfinite(out.logits).all()
    torch.nn.functional.cross_entropy(out.logits, b.targets).backward()
    stale = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not stale, stale

    # Padding never leaks: a shorter sample scores the same alone and in a padded batch.
    model.eval()
    with torch.no_grad():
        batched = model(b).logits
        alone = model(_first(replace(b, **_reorder(b, [1, 0, 2, 3])))).logits
    torch.testing.assert_close(alone[0], batched[1], rtol=1e-4, atol=1e-5)


def _reorder(b: Batch, order: list[int]) -> dict:
    pick = lambda d: {k: v[order] for k, v in d.items()}  # noqa: E731
    return {
        "ids": [b.ids[i] for i in order],
        "index": b.index[order],
        "inputs": pick(b.inputs),
        "masks": pick(b.masks),
        "present": pick(b.present),
        "targets": b.targets[order],
        "target_mask": b.target_mask[order],
    }


def test_branch_lengths_follow_table_one() -> None:
    """3.6 s of MFCC at hop 512 (156 frames) leaves 150 frames after stage 1 and 144
    after stage 2 (valid convolutions + 2-frame pooling); the visual branch keeps 15."""
    inputs = {"audio/m": StreamInfo(10), "video/e": StreamInfo(1024, modality="video")}
    model = create_method("sfav.lt1", inputs, TaskSpec("multiclass", 8))
    xa, ma = torch.randn(2, 10, 156), torch.ones(2, 156, dtype=torch.bool)
    ma[1, 100:] = False
    a1, m1 = model.branch_a.run(1, xa, ma)
    a2, m2 = model.branch_a.run(2, a1, m1)
    assert a1.shape == (2, 128, 150) and a2.shape == (2, 128, 144)
    assert m2[0].all() and m2[1].sum() == 100 - 12  # 4 blocks x 3 frames
    real = torch.ones(2, 15, dtype=torch.bool)
    v1, _ = model.branch_v.run(1, torch.randn(2, 1024, 15), real)
    v2, _ = model.branch_v.run(2, v1, real)
    assert v1.shape == (2, 64, 15) and v2.shape == (2, 128, 15)
    assert model.head.in_features == 256  # the paper's Linear(256, classes)


def test_intermediate_attention_importance_by_hand() -> None:
    torch.manual_seed(0)
    imp = AttentionImportance(6, 4, dim=8, heads=2)
    x, y = torch.randn(2, 5, 6), torch.randn(2, 3, 4)
    xm = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ym = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    got = imp(x, xm, y, ym).detach().numpy()
    wq, wk = imp.q.weight.detach().numpy().T, imp.k.weight.detach().numpy().T
    for b in range(2):
        nq, nk = int(xm[b].sum()), int(ym[b].sum())
        q, k = x[b, :nq].numpy() @ wq, y[b, :nk].numpy() @ wk
        maps = []
        for h in range(2):
            s = q[:, 4 * h : 4 * h + 4] @ k[:, 4 * h : 4 * h + 4].T / 2.0  # sqrt(d_head = 4)
            e = np.exp(s - s.max(1, keepdims=True))
            maps.append(e / e.sum(1, keepdims=True))
        want = np.mean(maps, 0).sum(0)  # mean over heads, sum over the query axis
        np.testing.assert_allclose(got[b, :nk], want, rtol=1e-5)
        assert (got[b, nk:] == 0).all()
    # A zeroed modality (no bias in W_q, W_k) gives a constant importance: no information.
    flat = imp(x, xm, torch.zeros_like(y), ym).detach().numpy()
    np.testing.assert_allclose(flat[0], np.full(3, 5 / 3), rtol=1e-6)
    np.testing.assert_allclose(flat[1, :2], np.full(2, 3 / 2), rtol=1e-6)


def test_bad_options_and_too_short_audio_fail_clearly() -> None:
    with pytest.raises(AvxError, match=r"fusion 'xx' is not built by SfavAttention.*sfav\.<fusion><heads>"):
        create_method("sfav.ia1", INPUTS, TaskSpec("multiclass", 3), fusion="xx")
    with pytest.raises(AvxError, match="fusion 'lt' is not built by SfavAttention"):
        create_method("sfav.ia1", INPUTS, TaskSpec("multiclass", 3), fusion="lt")
    with pytest.raises(AvxError, match="heads do not divide"):
        create_method("sfav-lt1", INPUTS, TaskSpec("multiclass", 3), heads=3)
    model = create_method("sfav-ia1", INPUTS, TaskSpec("multiclass", 3))
    with pytest.raises(AvxError, match=r"sample s1 has 10 frames of audio/a; .* needs >= 13"):
        model(_batch([20, 10], [5, 5]))
    assert SfavConfig().residual_attention  # the paper's block by default


def test_older_sfav_names_resolve_to_the_same_variant() -> None:
    for name in SFAV:
        old = name.replace(".", "-")
        assert METHODS.get(old) is METHODS.get(name) and old in METHODS.get(name).aliases
    assert all("-" not in n.removeprefix("sfav") for n in SFAV) and len(SFAV) == 9


def test_the_official_code_configuration_is_reachable_by_options() -> None:
    """``--set qkv_bias=false,dropout=0,attention_dim=0,residual_attention=false`` builds
    the official code's layers: no q/k/v biases, no dropout, IA projections as wide as the
    query branch (128 audio, 64 video), so its ia4 weights fit."""
    official = {"qkv_bias": False, "dropout": 0.0, "attention_dim": 0, "residual_attention": False}
    ia = create_method("sfav.ia4", INPUTS, TaskSpec("multiclass", 3), **official)
    assert ia.importance_v.q.weight.shape == (128, 128) and ia.importance_a.q.weight.shape == (64, 64)
    default = create_method("sfav.ia4", INPUTS, TaskSpec("multiclass", 3))
    assert default.importance_v.q.weight.shape == (64, 128)
    lt = create_method("sfav.lt1", INPUTS, TaskSpec("multiclass", 3), **official)
    attn = [m for m in lt.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attn and all(m.in_proj_bias is None and m.out_proj.bias is not None for m in attn)
    assert all(m.p == 0.0 for m in lt.modules() if isinstance(m, torch.nn.Dropout))
    lt.eval()
    out = lt(_batch([20, 16], [5, 4]))
    assert torch.isfinite(out.logits).all() and not lt.fuse_a.residual
    with_bias = create_method("sfav.lt1", INPUTS, TaskSpec("multiclass", 3))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(with_bias) - n(lt) == 3 * 128 + 3 * 128  # one q/k/v bias triple per block


# -- modality dropout --------------------------------------------------------------------
def test_softhard_expands_each_batch_four_times() -> None:
    b = _batch([20, 15, 20], [6, 6, 4])
    gen = torch.Generator().manual_seed(0)
    for policy in ("zeros", "mask"):
        out = ModalityDropout.parse("softhard", policy)(b, gen)
        assert len(out) == 12 and out.targets.tolist() == b.targets.tolist() * 4
        xa, xv = out.inputs["audio/a"], out.inputs["video/v"]
        a0, v0 = b.inputs["audio/a"], b.inputs["video/v"]
        torch.testing.assert_close(xa[:3], a0)  # the original pairs
        alpha = (xa[3:6, 0, 0] / a0[:, 0, 0]).unsqueeze(-1).unsqueeze(-1)
        torch.testing.assert_close(xa[3:6], a0 * alpha)  # audio x alpha, video x (1 - alpha)
        torch.testing.assert_close(xv[3:6], v0 * (1 - alpha))
        assert ((alpha >= 0) & (alpha < 1)).all()
        assert (xa[6:9] == 0).all() and torch.equal(xv[6:9], v0)  # audio absent
        assert (xv[9:12] == 0).all() and torch.equal(xa[9:12], a0)  # video absent
        absent_a = out.present["audio/a"][6:9]
        if policy == "mask":  # presented as the method presents a missing modality
            assert not absent_a.any() and not out.masks["audio/a"][6:9].any()
        else:
            assert absent_a.all() and torch.equal(out.masks["audio/a"][6:9], b.masks["audio/a"])


def test_noise_dropout_replaces_real_frames_only() -> None:
    b = _batch([30, 18], [6, 3])
    out = ModalityDropout.parse("noise", "zeros")(b, torch.Generator().manual_seed(1))
    assert len(out) == 6
    xa, ma = out.inputs["audio/a"], b.masks["audio/a"]
    assert torch.equal(out.inputs["video/v"][2:4], b.inputs["video/v"])  # audio noised, video kept
    assert not torch.isclose(xa[2:4][ma], b.inputs["audio/a"][ma]).any()
    assert (xa[3, 18:] == 0).all()  # padding stays padding
    assert abs(float(xa[2:4][ma].std()) - 1) < 0.15
    assert torch.equal(out.inputs["audio/a"][4:6], b.inputs["audio/a"])


def test_probabilistic_dropout_rate_and_never_all_modalities() -> None:
    n = 4000
    b = _batch([16] * n, [4] * n)
    out = ModalityDropout.parse("prob:0.4", "mask")(b, torch.Generator().manual_seed(0))
    gone_a, gone_v = ~out.present["audio/a"], ~out.present["video/v"]
    assert len(out) == n and not (gone_a & gone_v).any()
    # P(absent) = p(1 - p) + p^2 / 2 after a sample that lost both keeps one at random.
    for gone in (gone_a, gone_v):
        assert abs(gone.float().mean().item() - (0.4 * 0.6 + 0.16 / 2)) < 0.025
    assert (out.inputs["audio/a"][gone_a] == 0).all()


def test_three_modalities_and_bad_settings() -> None:
    b = _batch([16, 16], [4, 4])
    b.inputs["text/t"], b.masks["text/t"] = torch.randn(2, 3, 2), torch.ones(2, 3, dtype=torch.bool)
    b.present["text/t"] = torch.ones(2, dtype=torch.bool)
    out = ModalityDropout.parse("softhard", "zeros")(b, torch.Generator().manual_seed(0))
    assert len(out) == 2 * 5  # original, scaled, one per modality absent
    scales = [out.inputs[s][2:4].flatten(1)[:, 0] / b.inputs[s].flatten(1)[:, 0] for s in b.inputs]
    torch.testing.assert_close(torch.stack(scales).sum(0), torch.ones(2))
    for bad in ("soft", "prob:1.5", "prob:x", "noise:2"):
        with pytest.raises(AvxError, match="--dropout"):
            ModalityDropout.parse(bad)
    single = replace(b, inputs={"audio/a": b.inputs["audio/a"]})
    with pytest.raises(AvxError, match="two or more modalities"):
        ModalityDropout.parse("noise")(single, torch.Generator())


# -- the paper's key effect --------------------------------------------------------------
@pytest.mark.slow
def test_softhard_dropout_keeps_single_modalities_working(tmp_path: Path) -> None:
    """SFAV Table II: with soft+hard modality dropout, audio-only and video-only
    accuracy rise well above the no-dropout model's, and AV does not drop. Measured
    over these five seeds: single-modality mean accuracy 0.75 without dropout, 0.86
    with it; AV 0.995 and 0.985 (one test clip is 0.025). The margin asks for two
    thirds of the gain; AV may lose at most about one clip per seed."""
    acc: dict[str, list[dict[str, float]]] = {"none": [], "softhard": []}
    for seed in range(5):
        store = synthetic_store(tmp_path / "s.zarr", seed)
        for dropout in acc:
            base = TrainConfig(
                store=str(store),
                method="sfav.ia1",
                data=DataConfig(streams=("audio/syn", "video/syn"), labels="intended"),
                seed=seed,
                bootstrap=0,
            )
            cfg = replace(apply_preset(base, "sfav-ravdess", {"method"}), epochs=30, dropout=dropout)
            cfg = replace(cfg, data=base.data)  # 48 and 15 frames: no 3.6 s MFCC padding
            run = tmp_path / f"{dropout}-{seed}"
            train(cfg, run)
            table = evaluate_run(run, modality_table=("av", "a", "v", "mean"))["table"]
            acc[dropout].append({r["setting"][:2].strip(): r["accuracy"] for r in table})
    mean = {
        d: {k: float(np.mean([r[k] for r in rows])) for k in ("AV", "A", "V", "M")} for d, rows in acc.items()
    }
    single = {d: (m["A"] + m["V"]) / 2 for d, m in mean.items()}
    assert single["softhard"] >= single["none"] + 0.07, mean
    assert mean["softhard"]["AV"] >= mean["none"]["AV"] - 0.03, mean
    assert mean["softhard"]["M"] > mean["none"]["M"], mean


# -- CLI -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_preset_dropout_trials_and_the_sfav_table(demo_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "trials"
    common = ["--store", demo_store, "--streams", "audio/mfcc,video/mobilenetv2", "--labels", "intended"]
    run_avx(
        "fuse", "train", "--preset", "sfav-ravdess", "--method", "sfav.lt4", "--dropout", "noise",
        "--epochs", "2", "--set", "dropout=0.2", "--out", out, "--trials", "2", *common,
    )  # fmt: skip
    cfg = json.loads((out / "fold-1" / "config.json").read_text())
    assert (cfg["method"], cfg["dropout"], cfg["optimizer"], cfg["lr"], cfg["epochs"]) == (
        "sfav.lt4", "noise", "sgd", 0.04, 2,
    )  # fmt: skip
    assert (
        cfg["data"]["length"] == ["audio=pad:156", "video=pad:15"] and cfg["method_config"]["dropout"] == 0.2
    )

    ev = run_avx("fuse", "eval", out, "--settings", "av,a,v,mean", "--absent", "noise")
    table = pd.read_csv(out / "eval.csv").set_index("setting")
    rows = ["AV", "A (video noise)", "V (audio noise)", "M (mean of AV, A, V)"]
    assert list(table.index) == rows and "accuracy std" in table.columns
    folds = [pd.read_csv(out / f"fold-{k}" / "eval.csv").set_index("setting") for k in (0, 1)]
    for r in rows:
        vals = [f.loc[r, "accuracy"] for f in folds]
        assert table.loc[r, "accuracy"] == pytest.approx(np.mean(vals))
        assert table.loc[r, "accuracy std"] == pytest.approx(np.std(vals, ddof=1))
    m = folds[0].loc[rows[:3], "accuracy"].mean()
    assert folds[0].loc[rows[3], "accuracy"] == pytest.approx(m) and "| M (mean of AV, A, V) |" in ev.stdout

    bad = run_avx("fuse", "train", "--method", "late", "--dropout", "sometimes", "--out", tmp_path / "x",
                  *common, check=False)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --dropout: unknown 'sometimes'")
    bad = run_avx("fuse", "eval", out / "fold-0", "--settings", "av,x", check=False)
    assert bad.returncode == 2 and "--settings takes mean, all or modality letters" in bad.stderr
    assert "got 'x'" in bad.stderr
    # Any method trains with modality dropout, e.g. late fusion with the AuxFormer form.
    run_avx("fuse", "train", "--method", "late", "--dropout", "prob:0.3", "--epochs", "1", "--out",
            tmp_path / "late", *common)  # fmt: skip
    assert json.loads((tmp_path / "late" / "config.json").read_text())["dropout"] == "prob:0.3"


@pytest.mark.slow
def test_extract_preset_sets_the_papers_features(demo_corpus: Path, tmp_path: Path) -> None:
    """``avx extract --preset sfav-ravdess``: EfficientFace (SFAV input) on 15 face
    frames over 3.6 s at 224 px, and 10 MFCCs at 22,050 Hz; an explicit option wins."""
    store = tmp_path / "s.zarr"
    common = ["extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store]
    run_avx(*common, "--preset", "sfav-ravdess", "--weights", "none", "--min-face-size", "40", "--limit", "2")
    s = open_store(store)
    sid = s.stream("faces").committed_ids[0]
    assert s.stream("faces")[sid].shape[1:] == (224, 224, 3)
    assert s.stream("video/efficientface.sfav")[sid].shape == (15, 1024)
    assert s.stream("audio/mfcc.sfav")[sid].shape[1] == 10
    assert s.stream("audio/mfcc.sfav").provenance["sample_rate"] == 22050
    other = tmp_path / "o.zarr"
    run_avx("extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", other,
            "--preset", "sfav-ravdess", "--backbone", "mfcc.sfav", "--limit", "1")  # fmt: skip
    assert sorted(open_store(other).streams) == ["audio/mfcc.sfav"]
    bad = run_avx(*common, "--preset", "cold-paper", check=False)
    assert bad.returncode == 2 and "preset cold-paper sets no extraction options" in bad.stderr


def test_length_policies_by_modality() -> None:
    """The preset pads by modality (``audio=pad:156``), whatever the streams are called."""
    from avx.fuse.data import parse_length

    streams = ["audio/mfcc.sfav", "audio/mfcc", "video/efficientface.sfav"]
    got = parse_length(("audio=pad:156", "video=pad:15", "audio/mfcc=truncate:9"), streams)
    assert got == {
        "audio/mfcc.sfav": ("pad", 156),
        "audio/mfcc": ("truncate", 9),
        "video/efficientface.sfav": ("pad", 15),
    }
    with pytest.raises(AvxError, match="unknown stream or modality in --length 'text'"):
        parse_length(("text=pad:3",), streams)
