"""End-to-end training: backbones trained with the fusion method from stored crops and audio.

Real stores extracted by the real CLI (tiny random-init backbones saved and reloaded
through the users' code paths), real training runs, real reloading and re-extraction.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, create_backbone
from avx.extract.backbones.hf_audio import SpeechSSL
from avx.extract.backbones.waveform import SAMPLES, waveform_of
from avx.extract.media import decode_audio, resample
from avx.fuse.data import DataConfig, FusionData
from avx.fuse.end2end import EndToEndConfig, build_end_to_end, clip_augmentation, fit_statistics
from avx.fuse.methods import METHODS, create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.occlusion import occluded_data
from avx.fuse.run_folder import FusionRun
from avx.fuse.tasks import Objective
from avx.fuse.train import TrainConfig, Trainer, build_optimizers, train
from avx.store_schema import open_store
from avx.store_schema import spec as S
from tests.conftest import EXTRACT_ARGS, crash_then_resume, run_avx
from tests.tiny_models import save_speech_model

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM-INIT")

CROP = "efficientface:size=48"  # EfficientFace's architecture at a small input: fast on a CPU


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints: a group-norm wav2vec2 (base-like) and a layer-norm WavLM (large-like)."""
    d = tmp_path_factory.mktemp("speech")
    return {
        "wav2vec2": save_speech_model("wav2vec2", d / "w2v"),
        "wavlm": save_speech_model(
            "wavlm", d / "wavlm", feat_extract_norm="layer", do_stable_layer_norm=True
        ),
    }


@pytest.fixture(scope="module")
def e2e_store(demo_store: Path, demo_corpus: Path, speech: dict[str, Path], tmp_path_factory) -> Path:
    """The demo store plus the waveform and the cached features of the backbones the
    tests train end to end (EfficientFace at 48 px, the two tiny speech models)."""
    path = tmp_path_factory.mktemp("e2e") / "s.zarr"
    shutil.copytree(demo_store, path)
    run_avx(
        "extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", path, *EXTRACT_ARGS,
        "--backbone", "waveform", "--backbone", "efficientface", "--backbone", "wav2vec2",
        "--backbone", "wavlm", "--weights", f"wav2vec2={speech['wav2vec2']}",
        "--weights", f"wavlm={speech['wavlm']}", "--opt", CROP,
    )  # fmt: skip
    return path


def _config(
    store: Path, method: str = "late", streams=("video/faces", "audio/waveform"), **e2e
) -> TrainConfig:
    backbones = e2e.pop("backbones", ("video=efficientface", "audio=wav2vec2"))
    return TrainConfig(
        store=str(store),
        method=method,
        data=DataConfig(streams=streams),
        epochs=1,
        batch_size=8,
        bootstrap=0,
        end_to_end=EndToEndConfig(backbones=backbones, **e2e),
    )


def test_waveform_stream_holds_the_decoded_clip(e2e_store: Path, demo_corpus: Path) -> None:
    store = open_store(e2e_store)
    st = store.stream("audio/waveform")
    sid = str(store.sample_ids[3])
    row = store.samples.iloc[3]
    wav = waveform_of(st[sid], st.field(sid, SAMPLES))
    ref = resample(decode_audio(demo_corpus / row["audio_path"]), 16_000).waveform
    np.testing.assert_array_equal(wav, ref.astype(np.float32))
    assert st.field(sid, SAMPLES)[:-1].min() == 320 and 0 < st.field(sid, SAMPLES)[-1] <= 320


@pytest.mark.parametrize("audio", ["wav2vec2", "wavlm"])
def test_frozen_end_to_end_sees_the_cached_features(e2e_store: Path, audio: str) -> None:
    """Every backbone frozen, no augmentation: the method's inputs equal the normalised
    cached features (group-norm speech model clip by clip, layer-norm one batched)."""
    store = open_store(e2e_store)
    cached = FusionData(store, DataConfig(streams=("video/efficientface", f"audio/{audio}@all"))).load()
    raw = FusionData(store, DataConfig(streams=("video/faces", "audio/waveform")), raw=True)
    cfg = EndToEndConfig(backbones=("video=efficientface", f"audio={audio}"), freeze="all")
    front = build_end_to_end(store, raw.raw, cfg)
    assert front.infos["audio/waveform"] == cached.info[f"audio/{audio}"]
    assert front.infos["video/faces"] == cached.info["video/efficientface"]
    fit_statistics(front, raw.batches("train", 8))
    front.train()  # frozen: stays in evaluation mode, and no augmentation is configured
    idx = np.arange(len(raw.ids))
    for a in range(0, len(idx), 8):
        enc = front(raw.collate(idx[a : a + 8]))
        ref = cached.collate(idx[a : a + 8])
        for mine, theirs in (("video/faces", "video/efficientface"), ("audio/waveform", f"audio/{audio}")):
            assert torch.equal(enc.masks[mine], ref.masks[theirs])
            np.testing.assert_allclose(enc.inputs[mine], ref.inputs[theirs], atol=2e-3, rtol=1e-3)


def test_augmentation_is_per_clip() -> None:
    """The same flip and rotation for every frame of a clip, different between clips."""
    img = torch.rand(1, 3, 24, 24)
    clips, frames = 8, 3
    clip = torch.arange(clips).repeat_interleave(frames)
    out = clip_augmentation(clip, clips, torch.Generator().manual_seed(0))(
        img.expand(clips * frames, -1, -1, -1)
    )
    out = out.view(clips, frames, 3, 24, 24)
    assert all(torch.equal(out[c, 0], out[c, f]) for c in range(clips) for f in range(frames))
    assert len({tuple(out[c, 0].flatten()[:50].tolist()) for c in range(clips)}) == clips
    assert not torch.allclose(out[0, 0], img[0])


def _store_files(path: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("method", "streams"), [("late", None), ("sfav.ia1", ("video/faces", "audio/mfcc"))])
def test_end_to_end_trains_the_backbones_it_should(e2e_store: Path, tmp_path: Path, method, streams) -> None:
    streams = streams or ("video/faces", "audio/waveform")
    raw = {"video/faces": "video=efficientface", "audio/waveform": "audio=wav2vec2"}
    backbones = tuple(raw[s] for s in streams if s in raw)
    before = _store_files(e2e_store)
    trained, frozen = (
        Trainer(_config(e2e_store, method, streams, backbones=backbones, freeze=f), tmp_path / f)
        for f in ("none", "all")
    )
    start = {
        k: {n: p.detach().clone() for n, p in t.model.front_end.named_parameters()}
        for k, t in (("t", trained), ("f", frozen))
    }
    for t in (trained, frozen):
        t.fit()
    for name, p in trained.model.front_end.named_parameters():
        # unused by the features: EfficientFace's classifier, wav2vec2's SpecAugment embedding
        if ".fc." not in name and "masked_spec_embed" not in name:
            assert not torch.equal(p, start["t"][name]), name
    assert all(torch.equal(p, start["f"][n]) for n, p in frozen.model.front_end.named_parameters())
    metrics = trained.finish(0.0)
    assert _store_files(e2e_store) == before  # a training run never writes into the store
    run = FusionRun.from_pretrained(tmp_path / "none")
    assert run.model.front_end.streams == trained.model.front_end.streams
    from avx.fuse.evaluate import predict

    pred = predict(run.model, run.data(), "test", 8)
    ref = predict(trained.model.eval(), trained.data, "test", 8)
    np.testing.assert_allclose(pred.scores, ref.scores, atol=1e-5)
    assert metrics["end_to_end"]["backbones"]["video/faces"]["source"].startswith("provenance")


@pytest.mark.slow
def test_end_to_end_resumes_bit_identically(e2e_store: Path, tmp_path: Path) -> None:
    cfg = replace(_config(e2e_store, augment=True), epochs=2)
    ref = train(cfg, tmp_path / "ref")
    resumed = crash_then_resume(cfg, tmp_path / "crash", epoch=1)
    strip = lambda h: [{k: x for k, x in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(ref["history"])
    assert resumed["test"] == ref["test"]


@pytest.mark.slow
def test_a_clip_without_crops_is_skipped_and_counted(e2e_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(e2e_store, path)
    store = open_store(path)
    data = FusionData(store, DataConfig(streams=("video/faces",)), raw=True)
    row = int(data.rows[data.indices("train")[0]])
    g = zarr.open_group(str(path / "streams" / "faces"), mode="r+")
    index = g["index"][:]
    part = int(index[row, 1])
    index[row, 0] = 2  # failed
    g["index"][:] = index
    p = g[f"{S.PARTS}/{S.part_name(part)}"]
    p.attrs["failures"] = {**p.attrs.get("failures", {}), str(row): "no face found"}
    proc = run_avx(
        "fuse", "train", "--store", path, "--streams", "video/faces,audio/mfcc", "--method", "late",
        "--end-to-end", "video=efficientface", "--epochs", "1", "--bootstrap", "0", "--out", tmp_path / "run",
    )  # fmt: skip
    assert (
        "1 training clip(s) without it skipped in training" in proc.stderr and "no face found" in proc.stderr
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["end_to_end"]["skipped_training_clips"] == {"video/faces": 1}
    # usage errors of the command line
    proc = run_avx("fuse", "train", "--store", path, "--streams", "video/faces", "--method", "late",
                   "--out", tmp_path / "never", check=False)  # fmt: skip
    assert proc.returncode != 0 and "end to end (--end-to-end video=BACKBONE)" in proc.stderr
    proc = run_avx("fuse", "train", "--store", path, "--streams", "video/efficientface", "--method",
                   "late", "--freeze", "all", "--out", tmp_path / "never", check=False)  # fmt: skip
    assert proc.returncode != 0 and "--freeze applies to --end-to-end training only" in proc.stderr
    assert metrics["n_samples"]["train"] == int((data.split == "train").sum()) - 1


@pytest.mark.slow
def test_fine_tuned_backbone_re_extracts(e2e_store: Path, demo_corpus: Path, tmp_path: Path) -> None:
    """The loop papers 002 and 003 close: fine-tune end to end, then extract features
    with the fine-tuned backbone (``avx extract --weights efficientface=RUN/backbones/...``)."""
    run_dir = tmp_path / "run"
    run_avx(
        "fuse", "train", "--store", e2e_store, "--streams", "video/faces,audio/waveform", "--method", "late",
        "--end-to-end", "video=efficientface,audio=wav2vec2", "--epochs", "1", "--bootstrap", "0",
        "--out", run_dir,
    )  # fmt: skip
    # eval and predict read the run like any other; occlusion hides the crops the backbone encodes
    proc = run_avx("fuse", "eval", run_dir, "--settings", "av,a,v", "--occlude", "0.5", "--noise", "video")
    assert "occlu" in proc.stdout and "noise video/faces" in proc.stdout
    run_avx("fuse", "predict", run_dir)
    assert (run_dir / "predict" / "predictions.csv").exists()
    described = json.loads((run_dir / "model.json").read_text())["end_to_end"]
    weights = run_dir / described["video/faces"]["weights"]
    store = tmp_path / "again.zarr"
    shutil.copytree(e2e_store, store)
    shutil.rmtree(store / "streams" / "video" / "efficientface")
    run_avx(
        "extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store, *EXTRACT_ARGS,
        "--backbone", "efficientface", "--weights", f"efficientface={weights}", "--opt", CROP,
    )  # fmt: skip
    run = FusionRun.from_pretrained(run_dir)
    fe = run.model.front_end.of("video/faces")
    opened = open_store(store)
    sid = str(opened.sample_ids[0])
    crops = torch.from_numpy(opened.stream("faces")[sid])
    with torch.no_grad():
        mine, _ = fe.eval().features(crops[None], torch.ones(1, len(crops), dtype=torch.bool))
    np.testing.assert_allclose(
        opened.stream("video/efficientface")[sid], mine[0].numpy(), atol=1e-4, rtol=1e-4
    )
    assert opened.stream("video/efficientface").provenance["weights_sha256"] != open_store(e2e_store).stream(
        "video/efficientface"
    ).provenance.get("weights_sha256")


def test_bad_end_to_end_requests_are_one_line_errors(e2e_store: Path, tmp_path: Path) -> None:
    cases = {
        ("video/efficientface",): r"add video/faces \(crops\) or audio/waveform",
        ("video/faces", "audio/waveform"): "names no backbone for audio",
    }
    for streams, msg in cases.items():
        with pytest.raises(AvxError, match=msg):
            Trainer(
                _config(e2e_store, streams=streams, backbones=("video=efficientface",)), tmp_path / "never"
            )
    with pytest.raises(AvxError, match="not a speech model"):
        Trainer(_config(e2e_store, backbones=("video=efficientface", "audio=mfcc")), tmp_path / "never")
    with pytest.raises(AvxError, match="--freeze 'some'"):
        EndToEndConfig(("video=efficientface",), freeze="some").check()


# -- every method, every trainable backbone -------------------------------------------------


def _raw_batch(n: int = 3, frames: int = 3, crop: int = 48, samples: int = 12_000) -> tuple:
    g = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 255, (n, frames, crop, crop, 3), generator=g, dtype=torch.uint8)
    wav = torch.randn(n, samples, generator=g)
    fmask = torch.ones(n, frames, dtype=torch.bool)
    wmask = torch.ones(n, samples, dtype=torch.bool)
    wmask[1, samples // 2 :] = False  # a shorter clip
    return faces, fmask, wav, wmask


class _NoStore:
    streams: dict = {}  # noqa: RUF012


def _front(speech_folder: Path, visual: str = "efficientface", audio: str = "wav2vec2", **kw):
    from avx.fuse.selection import RawInput

    raw = {
        "video/faces": RawInput("faces", (48, 48, 3), np.dtype("uint8")),
        "audio/waveform": RawInput("audio/waveform", (), np.dtype("float32"), waveform=True),
    }
    opt = ("video:size=48",) if visual != "emofan" else ()  # EmoNet pools a 4x4 map of a 256 px input
    cfg = EndToEndConfig(
        (f"video={visual}", f"audio={audio}"),
        weights=("video=none", f"audio={speech_folder}"),
        options=opt,
        **kw,
    )

    class Store(_NoStore):
        def stream(self, name: str):  # the waveform's recorded sample rate
            return type("S", (), {"provenance": {"sample_rate": 16_000}})()

    return build_end_to_end(Store(), raw, cfg)


def _batch(kind: str):
    from avx.fuse.data import Batch

    faces, fmask, wav, wmask = _raw_batch()
    targets = (
        torch.tensor([0, 1, 2]) if kind == "multiclass" else torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    )
    return Batch(
        ids=["a", "b", "c"],
        index=np.arange(3),
        inputs={"video/faces": faces, "audio/waveform": wav},
        masks={"video/faces": fmask, "audio/waveform": wmask},
        present={
            "video/faces": torch.ones(3, dtype=torch.bool),
            "audio/waveform": torch.ones(3, dtype=torch.bool),
        },
        targets=targets.float() if kind != "multiclass" else targets,
        target_mask=torch.ones(3, dtype=torch.bool),
        raw=("video/faces", "audio/waveform"),
    )


@pytest.mark.parametrize("name", [n for n in METHODS.names() if not METHODS.get(n).needs_alignment])
def test_every_sequence_method_trains_its_backbones(name: str, speech: dict[str, Path]) -> None:
    """Each method, with EfficientFace and wav2vec2 in front: one real optimiser step
    moves backbone parameters, and its parameter groups cover them exactly once."""
    torch.manual_seed(0)
    card = METHODS.get(name)
    kind = "multiclass" if "multiclass" in card.tasks else card.tasks[0]
    front = _front(speech["wav2vec2"])
    if card.max_streams == 1:  # one stream: the visual one
        front.front.pop("audio__waveform")
        front.streams = ["video/faces"]
    model = create_method(name, front.infos, TaskSpec(kind, 3))
    model.attach_front_end(front)
    if len(model.stages()) > 1:  # two-stage: backbones train with the branches in stage 1 only
        model.set_stage(model.stages()[-1])
        assert not any(p.requires_grad for p in model.backbone_parameters())
        model.set_stage(model.stages()[0])
        assert all(p.requires_grad for p in model.backbone_parameters())
        model.set_stage("")
    batch = _batch(kind)
    if card.max_streams == 1:
        batch = replace(batch, raw=("video/faces",), inputs={"video/faces": batch.inputs["video/faces"]},
                        masks={"video/faces": batch.masks["video/faces"]},
                        present={"video/faces": batch.present["video/faces"]})  # fmt: skip
    groups = model.parameter_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert {id(p) for p in model.backbone_parameters()} <= set(ids)
    cfg = replace(_config(Path("unused")), method=name)
    optimizers = build_optimizers(model, cfg)
    assert any(g["lr"] == cfg.lr / 10 for o in optimizers.values() for g in o.param_groups)
    before = [p.detach().clone() for p in model.backbone_parameters()]
    objective = Objective(kind)
    model.train()
    encoded = model.encode_raw(batch)

    def step(loss: torch.Tensor, opts: list) -> None:
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    model.training_step(encoded, objective, optimizers, step, contextlib.nullcontext)
    moved = [not torch.equal(a, p) for a, p in zip(before, model.backbone_parameters(), strict=True)]
    assert any(moved), name


VISUAL = [
    n for n in BACKBONES.names() if getattr(BACKBONES.get(n).cls, "modality", "") == "video" and n != "faces"
]
SPEECH_ARCHS = ["wav2vec2", "wavlm", "hubert"]


@pytest.mark.parametrize("visual", VISUAL)
def test_every_visual_backbone_trains_end_to_end(visual: str, speech: dict[str, Path]) -> None:
    front = _front(speech["wav2vec2"], visual=visual)
    fe = front.of("video/faces")
    faces, fmask, _, _ = _raw_batch(n=2, frames=2, crop=48)
    fe.train()
    y, m = fe(faces, fmask)
    assert y.shape == (2, 2, fe.info.dim) and m.all()
    y.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fe.net.parameters())


@pytest.mark.parametrize("arch", SPEECH_ARCHS)
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_every_speech_backbone_trains_end_to_end(arch: str, norm: str, tmp_path: Path) -> None:
    extra = {"feat_extract_norm": "layer", "do_stable_layer_norm": True} if norm == "layer" else {}
    folder = save_speech_model(arch, tmp_path / arch, **extra)
    backbone = create_backbone(arch, weights=str(folder))
    assert isinstance(backbone, SpeechSSL)
    front = _front(
        folder, audio=arch, freeze="video=all,audio=feature-extractor", gradient_checkpointing=True
    )
    fe = front.of("audio/waveform")
    _, _, wav, wmask = _raw_batch()
    fe.train()
    y, m = fe(wav, wmask)
    frames = [backbone.n_frames(int(k)) for k in wmask.sum(1)]
    assert m.sum(1).tolist() == frames and y.shape[2:] == (backbone.frame_shape[0], backbone.frame_shape[1])
    # a single-clip forward (extraction's) gives the batched clip's features
    ref, _ = backbone(wav[1, : int(wmask[1].sum())].numpy())
    fe.eval()
    with torch.no_grad():
        raw, _ = fe.features(wav, wmask)
    np.testing.assert_allclose(raw[1, : frames[1]].numpy(), ref, atol=1e-4, rtol=1e-4)
    fe.train()
    y, _ = fe(wav, wmask)
    y.sum().backward()
    assert all(p.grad is None for p in fe.net.feature_extractor.parameters())
    assert any(p.grad is not None for p in fe.net.encoder.parameters())


def test_freezing_the_first_blocks(speech: dict[str, Path]) -> None:
    """``--freeze N``: a visual network's first N top-level blocks, a speech model's CNN,
    projection, positional convolution and first N transformer layers; nothing else."""
    front = _front(speech["wavlm"], audio="wavlm", freeze="video=2,audio=1")
    video, audio = front.of("video/faces").net, front.of("audio/waveform").net
    blocks = list(video.children())
    assert not any(p.requires_grad for b in blocks[:2] for p in b.parameters())
    assert all(p.requires_grad for b in blocks[2:] for p in b.parameters())
    frozen = {n for n, p in audio.named_parameters() if not p.requires_grad}
    assert all(
        n.startswith(
            ("feature_extractor", "feature_projection", "encoder.pos_conv_embed", "encoder.layers.0.")
        )
        for n in frozen
    )
    assert any(n.startswith("encoder.layers.0.") for n in frozen) and not any(
        n.startswith("encoder.layers.1.") for n in frozen
    )
    front.train()
    assert not blocks[0].training and blocks[2].training and not audio.encoder.layers[0].training


def test_prefetch_keeps_order_passes_errors_and_stops_early() -> None:
    from avx.prefetch import Prefetch

    assert list(Prefetch(range(7), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise ValueError("bad block")

    it = Prefetch(broken())
    with pytest.raises(ValueError, match="bad block"):
        list(it)
    early = Prefetch(iter(range(1000)), depth=1)
    for x in early:
        if x == 3:
            break
    early.thread.join(timeout=5)
    assert not early.thread.is_alive() and early.waited >= 0


@pytest.mark.parametrize(
    ("raw", "cached", "length"),
    [
        (("audio/mfcc", "video/faces"), ("audio/mfcc", "video/efficientface"), ()),
        (
            ("audio/mfcc", "video/faces", "audio/waveform"),
            ("audio/mfcc", "video/efficientface", "audio/wav2vec2@all"),
            ("resample:7",),
        ),
        (("audio/waveform", "video/faces"), ("audio/wav2vec2@all", "video/efficientface"), ("pad:40",)),
    ],
)
def test_aligned_raw_inputs_give_the_aligned_cached_features(
    e2e_store: Path, tmp_path: Path, raw: tuple, cached: tuple, length: tuple
) -> None:
    """Early fusion aligns every stream to the first one's clock: crops picked by nearest
    time and then encoded, and the speech model's output frames picked by nearest time
    from the whole clip, equal the cached features aligned the same way (either as the
    reference or aligned to another stream, under a length policy)."""
    store = open_store(e2e_store)
    ref = FusionData(store, DataConfig(streams=cached, length=length), align=True).load()
    backbones = ("video=efficientface", "audio=wav2vec2")[: len([s for s in raw if s != "audio/mfcc"])]
    cfg = _config(e2e_store, "early", raw, backbones=backbones, freeze="all")
    t = Trainer(replace(cfg, data=replace(cfg.data, length=length)), tmp_path / "early")
    t.fit_front_end()
    idx = np.arange(min(8, len(t.data.ids)))
    enc = t.model.front_end(t.data.collate(idx))
    theirs = ref.collate(idx)
    for mine, cached_name in zip(raw, cached, strict=True):
        cached_name = cached_name.split("@")[0]
        assert torch.equal(enc.masks[mine], theirs.masks[cached_name]), mine
        assert enc.inputs[mine].shape == theirs.inputs[cached_name].shape, mine
        np.testing.assert_allclose(enc.inputs[mine], theirs.inputs[cached_name], atol=2e-3, rtol=1e-3)
    # occluded crops are aligned like the clean ones: only the frames marked change
    occ = occluded_data(t.data, 0.5, "train", seed=1)
    i = next(i for i in idx if occ.corrupted["video/faces"][i] is not None)
    hidden = t.model.front_end(occ.collate(np.array([i]))).inputs["video/faces"][0]
    clean = enc.inputs["video/faces"][list(idx).index(i)]
    marked = torch.from_numpy(occ.corrupted["video/faces"][i])
    assert len(marked) == int(enc.masks["video/faces"][list(idx).index(i)].sum()) and marked.any()
    changed = (hidden[: len(marked)] - clean[: len(marked)]).abs().amax(-1) > 1e-4
    assert torch.equal(changed, marked)
    with pytest.raises(AvxError, match="rate:R would average raw inputs"):
        Trainer(replace(cfg, data=replace(cfg.data, align="rate:10")), tmp_path / "no")


@pytest.mark.slow
@pytest.mark.parametrize("method", [n for n in METHODS.names() if METHODS.get(n).needs_alignment])
def test_aligning_methods_train_both_backbones(method: str, e2e_store: Path, tmp_path: Path) -> None:
    """``early`` and ``cold`` (streams on one clock) fine-tune EfficientFace and wav2vec2."""
    t = Trainer(_config(e2e_store, method, ("audio/waveform", "video/faces")), tmp_path / method)
    front = t.model.end_to_end
    before = {s: [p.detach().clone() for p in front.of(s).net.parameters()] for s in front.streams}
    t.fit()
    for s, ps in before.items():
        assert any(not torch.equal(a, p) for a, p in zip(ps, front.of(s).net.parameters(), strict=True)), s
