"""Backbones: official checkpoint layouts load strictly, weights really load, outputs
have the declared shapes, and each backbone's documented behaviour holds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torchvision.models import efficientnet_b2 as tv_efficientnet_b2
from torchvision.models import mobilenet_v2

from avx.errors import AvxError, MediaError
from avx.extract.backbones import create_backbone
from avx.extract.backbones.efficientface import EfficientFaceNet
from avx.extract.backbones.emofan import EmoNetModel
from avx.extract.backbones.mfcc import MFCCConfig
from avx.extract.backbones.vggish import PATCH_SECONDS, VGGishNet, log_mel, mel_matrix
from avx.extract.run import _stream_spec
from tests.tiny_models import save_speech_model, save_text_model

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM-INIT", "ignore:.*pickled model")
RNG = np.random.default_rng(0)
FACES = RNG.integers(0, 255, (4, 224, 224, 3), dtype=np.uint8)


# Key names and shapes read off the official model definitions (EfficientFace by Zhao et al.,
# EmoNet by Toisoul et al., torchvggish), with the entry counts worked out from them by hand:
# EfficientFace 418 = conv1 6 + stage2 84 + stage3 156 + stage4 84 + local 48 + modulator 32
# + conv5 6 + fc 2; EmoNet 682; VGGish 18.
OFFICIAL = {
    "efficientface": (
        EfficientFaceNet,
        418,
        {
            "conv1.0.weight": (29, 3, 3, 3),
            "stage2.0.branch1.0.weight": (29, 1, 3, 3),
            "stage2.0.branch1.2.weight": (58, 29, 1, 1),
            "stage2.0.branch2.0.weight": (58, 29, 1, 1),
            "stage2.1.branch2.3.weight": (58, 1, 3, 3),
            "stage3.7.branch2.6.running_var": (116,),
            "stage4.3.branch2.5.weight": (232, 232, 1, 1),
            "local.conv1_1.weight": (116, 1, 3, 3),
            "local.conv4_2.weight": (116, 1, 3, 3),
            "local.bn4_2.num_batches_tracked": (),
            "modulator.channel_att.gate_c.gate_c_fc_0.weight": (7, 116),
            "modulator.channel_att.gate_c.gate_c_bn_1.running_mean": (7,),
            "modulator.channel_att.gate_c.gate_c_fc_final.weight": (116, 7),
            "modulator.spatial_att.gate_s.gate_s_conv_reduce0.weight": (7, 116, 1, 1),
            "modulator.spatial_att.gate_s.gate_s_conv_di_1.weight": (7, 7, 3, 3),
            "modulator.spatial_att.gate_s.gate_s_conv_final.bias": (1,),
            "conv5.0.weight": (1024, 464, 1, 1),
            "fc.weight": (7, 1024),
        },
    ),
    "emofan": (
        EmoNetModel,
        682,
        {
            "conv1.weight": (64, 3, 7, 7),
            "conv1.bias": (64,),
            "bn1.running_var": (64,),
            "conv2.downsample.0.weight": (64,),
            "conv2.downsample.2.weight": (128, 64, 1, 1),
            "conv4.conv3.weight": (64, 64, 3, 3),
            "m0.b1_4.conv1.weight": (128, 256, 3, 3),
            "m1.b2_plus_1.conv3.weight": (64, 64, 3, 3),
            "m1.b3_1.bn3.weight": (64,),
            "top_m_1.conv2.weight": (64, 128, 3, 3),
            "conv_last0.weight": (256, 256, 1, 1),
            "bn_end1.running_mean": (256,),
            "l0.weight": (68, 256, 1, 1),
            "l1.bias": (68,),
            "bl0.weight": (256, 256, 1, 1),
            "al0.weight": (256, 68, 1, 1),
            "conv1x1_input_emo_2.weight": (256, 768, 1, 1),
            "emo_net_2.0.conv1.weight": (128, 256, 3, 3),
            "emo_net_2.6.bn3.weight": (64,),
            "emo_fc_2.0.weight": (128, 256),
            "emo_fc_2.1.running_var": (128,),
            "emo_fc_2.3.weight": (10, 128),
        },
    ),
    "vggish": (
        VGGishNet,
        18,
        {
            "features.0.weight": (64, 1, 3, 3),
            "features.3.weight": (128, 64, 3, 3),
            "features.13.bias": (512,),
            "embeddings.0.weight": (4096, 12288),
            "embeddings.4.weight": (128, 4096),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_state_dict_layout_is_the_official_one(name: str) -> None:
    cls, count, shapes = OFFICIAL[name]
    state = cls().state_dict()
    assert len(state) == count
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "bl1.weight" not in state and "al1.weight" not in state  # only between hourglasses


def _perturbed(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict that differs from the default init, as trained weights do."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            scale = float(v.std()) if v.numel() > 1 and float(v.std()) > 0 else 0.1
            noise = torch.randn(v.shape, generator=g) * 0.1 * scale
            out[k] = v * (1 + noise.abs()) if "running_var" in k else v + noise
        else:
            out[k] = v
    return out


def test_efficientface_loads_the_official_checkpoint_format(tmp_path: Path) -> None:
    net = EfficientFaceNet(num_classes=7)
    state = _perturbed(net)
    ckpt = tmp_path / "efficient_face_affectnet7.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 30}, ckpt)
    b = create_backbone("efficientface", weights=str(ckpt))
    net.load_state_dict(state)
    x = b.to_input(torch.from_numpy(FACES))
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    feats, _ = b(FACES)
    assert feats.shape == (4, 1024)
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    assert b.provenance()["weights_sha256"] and b.provenance()["preprocess"]["color"] == "RGB"
    # An 8-class AffectNet head loads too (the classifier is not used for features).
    torch.save({"state_dict": {**state, "fc.weight": torch.zeros(8, 1024), "fc.bias": torch.zeros(8)}}, ckpt)
    assert np.allclose(create_backbone("efficientface", weights=str(ckpt))(FACES)[0], feats, atol=1e-5)


def test_efficientface_input_normalisation_presets() -> None:
    rgb = create_backbone("efficientface", weights="none")
    bgr = create_backbone("efficientface.sfav", weights="none")
    x = torch.from_numpy(FACES[:1])
    a, b = rgb.to_input(x), bgr.to_input(x)
    px = FACES[0, 0, 0].astype(np.float64) / 255
    assert np.allclose(b[0, :, 0, 0].numpy(), px[::-1])  # BGR / 255, no mean/std
    mean, std = np.array([0.554, 0.435, 0.382]), np.array([0.248, 0.216, 0.202])
    assert np.allclose(a[0, :, 0, 0].numpy(), (px - mean) / std, atol=1e-6)
    assert bgr.provenance()["preprocess"]["color"] == "BGR" and bgr.stream_name == "video/efficientface.sfav"


def test_options_become_the_config_that_provenance_records() -> None:
    """``--opt`` text is typed by the config's annotations; the stream's provenance holds
    the whole config, and the rebuild reads it rather than the name's defaults."""
    b = create_backbone("mfcc.sfav", options={"n_mfcc": "12", "center": "false", "fmax": "none"})
    assert b.config == MFCCConfig(22_050, 12, 2048, 2048, 512, 128, 0.0, None, False)
    prov = _stream_spec(b, None, {}).provenance
    assert prov["config"]["n_mfcc"] == 12 and prov["options"] == {
        "n_mfcc": "12",
        "center": "false",
        "fmax": "none",
    }
    again = create_backbone({**prov, "options": {}})  # the config alone rebuilds it
    assert again.config == b.config and again.name == "mfcc.sfav"
    tuple_opt = create_backbone("efficientface", weights="none", options={"mean": "0.5, 0.5, 0.5"})
    assert tuple_opt.config.mean == (0.5, 0.5, 0.5) and tuple_opt.preprocess.std == (0.248, 0.216, 0.202)
    for opts, msg in (
        ({"hopp": "1"}, r"vggish: unknown option\(s\) \['hopp'\]; valid: \['hop', 'postprocess', 'relu'\]"),
        ({"hop": "fast"}, "vggish: option hop: expected a number, got 'fast'"),
        ({"relu": "maybe"}, "vggish: option relu: expected true or false, got 'maybe'"),
    ):
        with pytest.raises(AvxError, match=msg):
            create_backbone("vggish", weights="none", options=opts)
    with pytest.raises(AvxError, match=r"efficientface: option color: 'HSV' is not one of \('RGB', 'BGR'\)"):
        create_backbone("efficientface", weights="none", options={"color": "HSV"})


def test_streams_recorded_before_configs_rebuild_from_their_options() -> None:
    """Provenance written by an avx that recorded ``options`` but no ``config``."""
    legacy = {"backbone": "efficientface", "weights": "random-init", "options": {"color": "sfav"}}
    b = create_backbone(legacy)
    assert b.config == create_backbone("efficientface.sfav", weights="none").config
    assert b.preprocess.color == "BGR" and b.preprocess.mean is None


def test_efficientface_needs_weights_or_explicit_none() -> None:
    with pytest.raises(
        AvxError, match="efficientface: no default weights; pass --weights efficientface=PATH"
    ):
        create_backbone("efficientface")


def test_checkpoint_mismatch_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "emonet_8.pth"
    state = EmoNetModel().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, bad)
    with pytest.raises(AvxError) as e:
        create_backbone("emofan", weights=str(bad))
    assert str(e.value) == f"{bad}: 'conv1.weight' has shape (64, 3, 5, 5), expected (64, 3, 7, 7)"
    del state["conv1.weight"]
    torch.save(state, bad)
    with pytest.raises(
        AvxError, match=r"emonet_8.pth: not a checkpoint of this architecture \(missing conv1"
    ):
        create_backbone("emofan", weights=str(bad))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(AvxError, match=r"junk\.pth: cannot load checkpoint"):
        create_backbone("mobilenetv2", weights=str(junk))


@pytest.mark.slow
def test_emofan_outputs_features_expression_valence_arousal(tmp_path: Path) -> None:
    net = EmoNetModel(n_expression=5)
    state = _perturbed(net)
    ckpt = tmp_path / "emonet_5.pth"
    torch.save(state, ckpt)
    b = create_backbone("emofan", weights=str(ckpt))
    assert b.preprocess.size == 256 and b.preprocess.mean is None
    faces = RNG.integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)
    feats, fields = b(faces)
    net.load_state_dict(state)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255)
    assert feats.shape == (2, 256) and fields["expression"].shape == (2, 5)
    np.testing.assert_allclose(feats, ref["features"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fields["valence"], ref["valence"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fields["arousal"], ref["arousal"].numpy(), rtol=1e-4, atol=1e-5)
    assert b.provenance()["expression_names"] == ["neutral", "happy", "sad", "surprise", "fear"]
    assert torch.nn.InstanceNorm2d is not torch.nn.BatchNorm2d  # no process-wide patching


def test_efficientnet_b2_loads_hsemotion_timm_and_torchvision_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(3)
    hse = timm.create_model("efficientnet_b2", pretrained=False)
    hse.classifier = torch.nn.Sequential(torch.nn.Linear(1408, 8))  # HSEmotion enet_b2_8 layout
    torch.save(hse, tmp_path / "enet_b2_8.pt")  # HSEmotion pickles the whole model
    with pytest.raises(AvxError, match=r"enet_b2_8\.pt: pickles Python objects.*--trust-pickle"):
        create_backbone("efficientnet-b2", weights=str(tmp_path / "enet_b2_8.pt"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = create_backbone("efficientnet-b2", weights=str(tmp_path / "enet_b2_8.pt"), trust_pickle=True)
    assert any("pickled model object" in str(x.message) for x in w)
    assert b.provenance()["weights_unpickled"] == "trusted by --trust-pickle"
    feats, _ = b(FACES)
    with torch.no_grad():
        ref = hse.eval().forward_head(
            hse.forward_features(b.to_input(torch.from_numpy(FACES))), pre_logits=True
        )
    assert feats.shape == (4, 1408)
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-4, atol=1e-5)
    torch.save(hse.state_dict(), tmp_path / "timm.pth")
    assert np.allclose(
        create_backbone("efficientnet-b2", weights=str(tmp_path / "timm.pth"))(FACES)[0], feats, atol=1e-5
    )
    tv = tv_efficientnet_b2()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    b_tv = create_backbone("efficientnet-b2", weights=str(tmp_path / "tv.pth"))
    with torch.no_grad():
        ref_tv = tv.eval().avgpool(tv.features(b_tv.to_input(torch.from_numpy(FACES)))).flatten(1)
    np.testing.assert_allclose(b_tv(FACES)[0], ref_tv.numpy(), rtol=1e-4, atol=1e-5)
    assert "torchvision" in b_tv.provenance()["architecture"]


def test_mobilenetv2_loads_an_affectnet_finetuned_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(4)
    m = mobilenet_v2(num_classes=8)
    ckpt = tmp_path / "mnv2_affectnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}, ckpt)
    b = create_backbone("mobilenetv2", weights=str(ckpt))
    with torch.no_grad():
        ref = m.eval().features(b.to_input(torch.from_numpy(FACES))).mean((2, 3))
    np.testing.assert_allclose(b(FACES)[0], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_vggish_frontend_patches_and_relu(tmp_path: Path) -> None:
    w = mel_matrix()
    assert w.shape == (257, 64) and (w[0] == 0).all() and (w >= 0).all()
    peaks = w.argmax(axis=0)
    assert np.all(np.diff(peaks) >= 0) and peaks[0] >= 3 and peaks[-1] <= 240  # 125 .. 7500 Hz
    wav = (0.1 * RNG.standard_normal(16000 * 3)).astype(np.float32)
    mel = log_mel(wav)
    assert mel.shape == (1 + (48000 - 400) // 160, 64) and mel.min() >= np.log(0.01) - 1e-6
    net = VGGishNet()
    ckpt = tmp_path / "vggish-10086976.pth"
    torch.save(_perturbed(net), ckpt)
    pre = create_backbone("vggish", weights=str(ckpt))
    post = create_backbone("vggish", weights=str(ckpt), options={"relu": "true"})
    cold = create_backbone("vggish.cold", weights=str(ckpt))
    e, ts = pre(wav)
    assert e.shape == (3, 128) and np.allclose(ts, np.arange(3) * 0.96 + PATCH_SECONDS / 2)
    assert (e < 0).any() and (post(wav)[0] >= 0).all()
    np.testing.assert_allclose(post(wav)[0], np.maximum(e, 0), rtol=1e-4, atol=1e-5)
    ec, tc = cold(wav)
    assert len(ec) == 1 + (len(mel) - 96) // 10 and np.allclose(np.diff(tc), 0.1)
    np.testing.assert_allclose(ec[0], e[0], rtol=1e-4, atol=1e-5)  # same first patch
    with pytest.raises(MediaError, match="too short"):
        pre(wav[:8000], source="a.wav")
    with pytest.raises(AvxError, match="vggish: unknown option"):
        create_backbone("vggish", weights="none", options={"hopp": "1"})


@pytest.fixture(scope="module")
def speech_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hf")
    return {a: save_speech_model(a, d / a) for a in ("wav2vec2", "wavlm", "hubert")}


@pytest.mark.parametrize("arch", ["wav2vec2", "wavlm", "hubert"])
def test_speech_models_store_every_hidden_state(arch: str, speech_folders: dict[str, Path]) -> None:
    from transformers import AutoModel

    folder = speech_folders[arch]
    b = create_backbone(arch, weights=str(folder))
    wav = (0.1 * RNG.standard_normal(16000 * 2)).astype(np.float32)
    feats, ts = b(wav)
    assert feats.shape == (99, 3, 32) and b.layer_axis == 0  # 2 layers + transformer input
    assert np.allclose(np.diff(ts), 0.02) and ts[0] == pytest.approx(0.0125)
    ref_model = AutoModel.from_pretrained(folder).eval()
    x = torch.from_numpy((wav - wav.mean()) / np.sqrt(wav.var() + 1e-7))[None]
    with torch.no_grad():
        hs = ref_model(x, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(feats, torch.stack(hs, 2)[0].numpy(), rtol=1e-4, atol=1e-4)
    prov = b.provenance()
    assert prov["weights_kind"] == "folder" and "model.safetensors" in prov["weights_sha256"]
    sub = create_backbone(arch, weights=str(folder), options={"layers": "0,2"})
    assert sub.frame_shape == (2, 32) and np.allclose(sub(wav)[0], feats[:, [0, 2]], atol=1e-5)
    with pytest.raises(AvxError, match=r"layers \[3\] out of range"):
        create_backbone(arch, weights=str(folder), options={"layers": "0-3"})


def test_wrong_architecture_and_presets(speech_folders: dict[str, Path]) -> None:
    with pytest.raises(AvxError, match="a 'wav2vec2' checkpoint, not wavlm"):
        create_backbone("wavlm", weights=str(speech_folders["wav2vec2"]))
    b = create_backbone("wavlm-large", weights=str(speech_folders["wavlm"]))
    assert b.stream_name == "audio/wavlm-large"


def test_long_audio_is_windowed_without_changing_local_layers(tmp_path: Path) -> None:
    # Layer-norm feature encoder, as in the large checkpoints (wav2vec2-large-robust, WavLM
    # Large): its CNN is local, so the transformer input is the same however audio is cut.
    folder = save_speech_model(
        "wav2vec2", tmp_path / "w2v", feat_extract_norm="layer", do_stable_layer_norm=True
    )
    wav = (0.1 * RNG.standard_normal(16000 * 9)).astype(np.float32)
    whole = create_backbone("wav2vec2", weights=str(folder))
    windowed = create_backbone("wav2vec2", weights=str(folder), options={"window": "4", "context": "1"})
    a, ta = whole(wav)
    b, tb = windowed(wav)
    assert a.shape == b.shape and np.array_equal(ta, tb)
    np.testing.assert_allclose(b[:, 0], a[:, 0], rtol=1e-4, atol=1e-4)  # CNN + positional conv
    assert windowed.provenance()["window_s"] == 4.0
    with pytest.raises(MediaError, match=r"too short \(0.0100 s < one 0.025 s frame\)"):
        whole(wav[:160])


def test_text_encoder_tokens_and_pooled(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = save_text_model(tmp_path / "bert")
    tok = create_backbone("text", weights=str(folder))
    pooled = create_backbone("text.pooled", weights=str(folder))
    text = "It's eleven o'clock"
    feats, ts = tok(text)
    n_tokens = len(AutoTokenizer.from_pretrained(folder)(text)["input_ids"])
    assert feats.shape == (n_tokens, 32) and np.isnan(ts).all()
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt"))
    np.testing.assert_allclose(feats, out.last_hidden_state[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled(text)[0], out.pooler_output.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(MediaError, match="clip7: no transcript"):
        tok("  ", source="clip7")


@pytest.mark.parametrize(("name", "dims"), [("egemaps", 25), ("egemaps.functionals", 88)])
def test_opensmile_features(name: str, dims: int) -> None:
    b = create_backbone(name)
    t = np.arange(16000 * 2) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.1 * RNG.standard_normal(len(t)))).astype(np.float32)
    feats, ts = b(wav)
    assert feats.shape[1] == dims and np.isfinite(feats).all()
    if name == "egemaps":
        assert abs(len(feats) - 196) <= 5 and np.allclose(np.diff(ts), 0.01)
    else:
        assert feats.shape[0] == 1 and ts[0] == pytest.approx(1.0, abs=0.01)
