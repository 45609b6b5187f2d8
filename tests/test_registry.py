"""Registries: names, one-line errors, and every registered backbone/method works."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from avx.corpora import CORPORA
from avx.errors import AvxError, UnknownNameError
from avx.extract.backbones import (
    BACKBONES,
    AudioBackbone,
    TextBackbone,
    VisualBackbone,
    create_backbone,
    list_backbones,
)
from avx.extract.run import _stream_spec
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.methods import METHODS, create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.tasks import Objective
from avx.serialization import to_dict
from tests.conftest import run_avx
from tests.tiny_models import save_speech_model, save_text_model


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as e:
        create_backbone("wavlm-huge")
    msg = str(e.value)
    assert msg.startswith("unknown backbone 'wavlm-huge'; valid: ")
    assert "mfcc" in msg and "mobilenetv2" in msg and "\n" not in msg
    with pytest.raises(UnknownNameError) as e:
        METHODS.get("nope")
    msg = str(e.value)
    assert msg.startswith("unknown fusion method 'nope'; valid: ") and "\n" not in msg
    assert msg.removeprefix("unknown fusion method 'nope'; valid: ").split(", ") == METHODS.names()
    with pytest.raises(UnknownNameError, match="cremad"):
        CORPORA.get("crema")


def test_dash_and_underscore_are_the_same_name() -> None:
    assert CORPORA.get("avx_demo") is CORPORA.get("avx-demo")
    assert METHODS.get(" Late ") is METHODS.get("late")


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny save_pretrained folders standing in for the hub checkpoints (no network in tests)."""
    d = tmp_path_factory.mktemp("hf")
    out = {a: save_speech_model(a, d / a) for a in ("wav2vec2", "wavlm", "hubert")}
    out["text"] = save_text_model(d / "bert")
    return out


@pytest.mark.filterwarnings("ignore:.*RANDOM-INIT")
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_produces_its_declared_frames(name: str, hf_folders: dict[str, Path]) -> None:
    arch = next((a for a in hf_folders if name.split(".")[0].startswith(a)), None)
    # batch_size=4: every forward pass is padded to the batch size, and 4 covers the 3 test crops
    b = create_backbone(name, weights=str(hf_folders[arch]) if arch else "none", batch_size=4)
    card = BACKBONES.get(name)
    assert card.name == name and card.modality == b.modality and card.weights
    if arch is None and name != "faces" and "D]" not in card.shape:  # the declared width is the real one
        assert f"{b.frame_shape[-1]}]" in card.shape.replace(" ", ""), (card.shape, b.frame_shape)
    prov = b.provenance()
    assert prov["backbone"] == name and ("weights_sha256" in prov or name == "faces")
    assert isinstance(b.config, b.config_class) and b.config == _configured(card.config, b.config)
    feats = _run(b)
    # The stream records the whole config; rebuilding from that provenance gives the same
    # extractor: same config, same provenance, the same weights (or features).
    stream_prov = _stream_spec(b, None, {}).provenance
    assert stream_prov["config"] == to_dict(b.config)
    again = create_backbone(stream_prov)
    assert type(again) is type(b) and again.config == b.config and again.provenance() == prov
    if isinstance(getattr(b, "model", None), torch.nn.Module):
        mine, theirs = b.model.state_dict(), again.model.state_dict()  # type: ignore[attr-defined]
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    elif feats is not None:
        np.testing.assert_array_equal(_run(again), feats)


def _configured(default: object, built: object) -> object:
    """The card's config, with what a backbone learns from its weights (EmoFAN's head size)."""
    learned = {k: getattr(built, k) for k in ("n_expression", "layers") if hasattr(default, k)}
    return replace(default, **learned)  # type: ignore[type-var]


def _run(b: object) -> np.ndarray | None:
    """Features of ``b`` on a fixed input, checked against its declared shapes."""
    rng = np.random.default_rng(0)
    if isinstance(b, AudioBackbone):
        wav = rng.standard_normal(b.sample_rate * 2).astype(np.float32)
        feats, ts, *fields = b(wav)  # + per-frame fields when declared (the waveform's samples)
        assert feats.shape[1:] == b.frame_shape and ts.shape == (len(feats),)
        assert set(fields[0] if fields else {}) == set(b.fields)
        assert np.all(np.diff(ts) > 0)
        if b.frame_rate is not None:
            # two seconds of audio, less the span of one analysis window
            assert 2 * b.frame_rate - 10 <= len(feats) <= 2 * b.frame_rate + 3
        return feats
    if isinstance(b, TextBackbone):
        feats, ts = b("It's eleven o'clock")
        assert feats.shape[1:] == b.frame_shape and np.isfinite(feats).all()
        return feats
    if isinstance(b, VisualBackbone):
        faces = rng.integers(0, 255, (3, b.crop_size, b.crop_size, 3), dtype=np.uint8)
        feats, fields = b(faces)
        assert feats.shape == (3, *b.frame_shape) and np.isfinite(feats).all()
        assert set(fields) == set(b.fields)
        return feats
    assert b.stream_name == "faces"  # type: ignore[attr-defined]
    return None


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_a_step_and_handles_a_missing_stream(name: str) -> None:
    torch.manual_seed(0)
    inputs = {"audio/a": StreamInfo(5), "video/v": StreamInfo(7, modality="video")}
    if METHODS.get(name).max_streams == 1:
        inputs.pop("video/v")
    kind = "multiclass" if "multiclass" in METHODS.get(name).tasks else METHODS.get(name).tasks[0]
    model = create_method(name, inputs, TaskSpec(kind, 3))
    multihot = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    targets = torch.tensor([0, 1, 2]) if kind == "multiclass" else multihot
    b = Batch(
        ids=["x", "y", "z"],
        index=np.arange(3),
        # 16 audio frames: SFAV's audio branch needs 13 (four valid convolutions with pooling)
        inputs={"audio/a": torch.randn(3, 16, 5), "video/v": torch.randn(3, 2, 7)},
        masks={"audio/a": torch.ones(3, 16, dtype=torch.bool), "video/v": torch.ones(3, 2, dtype=torch.bool)},
        present={"audio/a": torch.tensor([True, True, True]), "video/v": torch.tensor([True, False, True])},
        targets=targets,
        target_mask=torch.ones(3, dtype=torch.bool),
    )
    b.masks["video/v"][1] = False
    b.inputs["video/v"][1] = 0
    out = model(b)
    assert out.logits.shape == (3, 3) and torch.isfinite(out.logits).all()
    if out.fusion_weights is not None:  # [B, M], or per frame [B, T, M]
        w = out.fusion_weights
        assert (w[1, ..., 1] == 0).all()  # the absent stream gets no weight
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]))
    terms = model.loss(out, b, Objective(kind))
    # Every parameter must reach some output: the loss, a per-stream prediction, or the
    # method's own training step (VAVL's reconstruction heads train only there).
    extra = sum(lg.sum() for lg in out.modality_logits.values()) * 1e-3
    (torch.stack(list(terms.values())).sum() + extra).backward()
    optimizers = {k: torch.optim.SGD(ps, lr=0.0) for k, ps in model.parameter_groups().items()}
    steps = model.training_step(
        b, Objective(kind), optimizers, lambda loss, _opts: loss.backward(), contextlib.nullcontext
    )
    assert steps and all(np.isfinite(v) for v in steps.values())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # parameter groups (one optimiser each) cover every trainable parameter exactly once
    grouped = [id(p) for ps in model.parameter_groups().values() for p in ps]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


# -- declared capabilities are tested, not trusted -------------------------------------------


def _capability_cases() -> list[tuple[str, str, bool, int]]:
    """(method, task, per frame, layers) for every claim every method card makes (every
    task at every level it claims; multi-layer input once per method)."""
    cases = []
    for card in METHODS.cards():
        for task in card.tasks:
            for frame in (False, True) if card.frame_level else (False,):
                cases.append((card.name, task, frame, 1))
        # Layer mixing happens before any task-specific part: one multi-layer case each.
        cases.append((card.name, card.tasks[0], False, 3))
    return cases


def _capability_batch(n_streams: int, task: str, frame: bool, layers: int, k: int) -> Batch:
    """Two or three streams on one 20-frame clock (aligned, as per-frame targets are), the
    second sample's second stream absent, padding at the end of the third sample (16 real
    frames: SFAV's audio branch needs 13)."""
    torch.manual_seed(0)
    b, t = 3, 20
    specs = [("audio/a", 5), ("video/v", 7), ("text/t", 4)][:n_streams]
    inputs, masks = {}, {}
    for s, d in specs:
        shape = (b, t, layers, d) if layers > 1 else (b, t, d)
        inputs[s] = torch.randn(shape)
        masks[s] = torch.ones(b, t, dtype=torch.bool)
        masks[s][2, 16:] = False
    present = {s: torch.ones(b, dtype=torch.bool) for s, _ in specs}
    if n_streams > 1:
        present["video/v"][1] = False
        masks["video/v"][1] = False
        inputs["video/v"][1] = 0
    shape = (b, t) if frame else (b,)
    if task == "multiclass":
        targets = torch.randint(0, k, shape)
    elif task == "multilabel":
        targets = (torch.rand(*shape, k) < 0.5).float()
    else:
        targets = torch.randn(*shape, k)
    target_mask = masks["audio/a"].clone() if frame else torch.ones(b, dtype=torch.bool)
    return Batch(["x", "y", "z"], np.arange(b), inputs, masks, present, targets, target_mask)


@pytest.mark.parametrize(("name", "task", "frame", "layers"), _capability_cases())
def test_every_declared_capability_gives_the_right_shapes_and_a_gradient(
    name: str, task: str, frame: bool, layers: int
) -> None:
    card = METHODS.get(name)
    n_streams = card.min_streams
    k = 3
    batch = _capability_batch(n_streams, task, frame, layers, k)
    info = {
        s: StreamInfo(x.shape[-1], layers=layers, modality=s.split("/")[0]) for s, x in batch.inputs.items()
    }
    model = create_method(name, info, TaskSpec(task, k, frame_level=frame))
    out = model(batch)
    want = (3, 20, k) if frame else (3, k)
    assert out.logits.shape == want and torch.isfinite(out.logits).all()
    for s, lg in out.modality_logits.items():
        assert lg.shape == want, s
    terms = model.loss(out, batch, Objective(task))
    loss = torch.stack(list(terms.values())).sum()
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if layers > 1:  # the learned layer mixing is trained
        mixes = [m.weights for m in model.layer_mix.values()]
        assert mixes and all(w.grad is not None for w in mixes)


@pytest.mark.parametrize("name", METHODS.names())
def test_undeclared_capabilities_are_refused(name: str) -> None:
    card = METHODS.get(name)
    info = {"audio/a": StreamInfo(5), "video/v": StreamInfo(7, modality="video"), "text/t": StreamInfo(4)}
    inputs = dict(list(info.items())[: card.min_streams])
    for task in set(("multiclass", "multilabel", "regression")) - set(card.tasks):
        with pytest.raises(AvxError, match="does not support task"):
            create_method(name, inputs, TaskSpec(task, 3))
    if not card.frame_level:
        with pytest.raises(AvxError, match="per sequence only"):
            create_method(name, inputs, TaskSpec(card.tasks[0], 3, frame_level=True))
    if card.max_streams is not None:
        many = {f"audio/s{i}": StreamInfo(3) for i in range(card.max_streams + 1)}
        with pytest.raises(AvxError, match="streams; got"):
            create_method(name, many, TaskSpec(card.tasks[0], 3))


def test_method_cards_default_to_the_conservative_claims() -> None:
    from avx.fuse.methods.base import MethodCard
    from avx.fuse.methods.unimodal import Unimodal

    card = MethodCard("x", Unimodal)
    assert (card.tasks, card.frame_level, card.min_streams, card.missing) == (
        ("multiclass",),
        False,
        2,
        "mask",
    )


@pytest.mark.slow
def test_every_list_is_the_one_listing() -> None:
    for kind, registry in (("methods", METHODS), ("backbones", BACKBONES), ("corpora", CORPORA)):
        names = run_avx("list", kind, "--names").stdout.split()
        assert names == registry.names()
    table = run_avx("list", "methods").stdout
    assert table == run_avx("fuse", "methods").stdout and "per frame" in table
    assert run_avx("list", "backbones").stdout == run_avx("extract", "--list").stdout
    assert run_avx("list", "corpora").stdout == run_avx("corpus", "list").stdout
    assert "sfav-ravdess" in run_avx("list", "presets").stdout == run_avx("fuse", "presets").stdout
