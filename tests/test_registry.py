"""Registries: names, one-line errors, and every registered backbone/method works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avx.corpora import CORPORA
from avx.errors import UnknownNameError
from avx.extract.backbones import AudioBackbone, TextBackbone, VisualBackbone, create_backbone, list_backbones
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.methods import METHODS, create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.tasks import Objective
from tests.tiny_models import save_speech_model, save_text_model


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as e:
        create_backbone("wavlm-huge")
    msg = str(e.value)
    assert msg.startswith("unknown backbone 'wavlm-huge'; valid: ")
    assert "mfcc" in msg and "mobilenetv2" in msg and "\n" not in msg
    with pytest.raises(UnknownNameError) as e:
        METHODS.get("nope")
    assert str(e.value).startswith(
        "unknown fusion method 'nope'; valid: cold, context, early, late, mult, sfav-ia1,"
    )
    assert str(e.value).endswith("sfav-tva, tav, tva, unimodal")
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
    b = create_backbone(name, weights=str(hf_folders[arch]) if arch else "none")
    prov = b.provenance()
    assert prov["backbone"] == name and ("weights_sha256" in prov or name == "faces")
    rng = np.random.default_rng(0)
    if isinstance(b, AudioBackbone):
        wav = rng.standard_normal(b.sample_rate * 2).astype(np.float32)
        feats, ts = b(wav)
        assert feats.shape[1:] == b.frame_shape and ts.shape == (len(feats),)
        assert np.all(np.diff(ts) > 0)
        if b.frame_rate is not None:
            # two seconds of audio, less the span of one analysis window
            assert 2 * b.frame_rate - 10 <= len(feats) <= 2 * b.frame_rate + 3
    elif isinstance(b, TextBackbone):
        feats, ts = b("It's eleven o'clock")
        assert feats.shape[1:] == b.frame_shape and np.isfinite(feats).all()
    elif isinstance(b, VisualBackbone):
        faces = rng.integers(0, 255, (3, b.crop_size, b.crop_size, 3), dtype=np.uint8)
        feats, fields = b(faces)
        assert feats.shape == (3, *b.frame_shape) and np.isfinite(feats).all()
        assert set(fields) == set(b.fields)
    else:
        assert b.stream_name == "faces"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_a_step_and_handles_a_missing_stream(name: str) -> None:
    torch.manual_seed(0)
    inputs = {"audio/a": StreamInfo(5), "video/v": StreamInfo(7, modality="video")}
    if METHODS.get(name).max_streams == 1:
        inputs.pop("video/v")
    model = create_method(name, inputs, TaskSpec("multiclass", 3))
    b = Batch(
        ids=["x", "y", "z"],
        index=np.arange(3),
        # 16 audio frames: SFAV's audio branch needs 13 (four valid convolutions with pooling)
        inputs={"audio/a": torch.randn(3, 16, 5), "video/v": torch.randn(3, 2, 7)},
        masks={"audio/a": torch.ones(3, 16, dtype=torch.bool), "video/v": torch.ones(3, 2, dtype=torch.bool)},
        present={"audio/a": torch.tensor([True, True, True]), "video/v": torch.tensor([True, False, True])},
        targets=torch.tensor([0, 1, 2]),
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
    terms = model.loss(out, b, Objective("multiclass"))
    # Every parameter must reach some output: the loss or a per-stream prediction.
    extra = sum(lg.sum() for lg in out.modality_logits.values()) * 1e-3
    (torch.stack(list(terms.values())).sum() + extra).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
