"""Backbone forward throughput: avx's batched call against the bare network, fp32 and AMP.

For each visual backbone, the same random uint8 crops go through (1) the bare network
in a plain loop over batches (the baseline: ``to_input`` + ``forward``, no padding, no
copies back) and (2) ``backbone(crops)``, avx's call (fixed-size padded batches, fields,
results copied back to host), in float32 and with float16 autocast; the AMP features are
compared with the float32 ones. Audio: a wav2vec2-large-sized model (random init, so no
download) on 4 s clips, float32 vs AMP. ``--oom-check`` starts EmoFAN at a batch size
that cannot fit and shows the automatic halving.

Usage: python benchmarks/backbone_throughput.py [--device cuda] [--frames 2048] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from avx.extract.backbones import create_backbone

VISUAL = ("mobilenetv2", "efficientface", "efficientnet-b2", "emofan")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bare(b, x: torch.Tensor, bs: int, device: str) -> float:
    with torch.inference_mode(), b.runtime.autocast():
        b.forward(b.to_input(x[:bs].to(device)))
        _sync(device)
        t0 = time.perf_counter()
        for a in range(0, len(x), bs):
            b.forward(b.to_input(x[a : a + bs].to(device, non_blocking=True)))
        _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--oom-check", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    dev = args.device
    bs = args.batch_size or (256 if dev.startswith("cuda") else 16)
    if dev.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    for name in VISUAL:
        size = 256 if name == "emofan" else 224
        crops = rng.integers(0, 255, (args.frames, size, size, 3), dtype=np.uint8)
        x = torch.from_numpy(crops).pin_memory() if dev.startswith("cuda") else torch.from_numpy(crops)
        row = []
        feats = {}
        for amp in (False, True) if dev.startswith("cuda") else (False,):
            b = create_backbone(name, weights="none", device=dev, batch_size=bs, amp=amp)
            t_bare = _bare(b, x, bs, dev)
            b(crops[:bs])
            _sync(dev)
            t0 = time.perf_counter()
            feats[amp], _ = b(crops)
            _sync(dev)
            t_avx = time.perf_counter() - t0
            tag = "amp " if amp else "fp32"
            row.append(
                f"{tag}: bare {args.frames / t_bare:8.0f} f/s, avx {args.frames / t_avx:8.0f} f/s"
                f" (ratio {t_bare / t_avx:.2f})"
            )
        line = f"{name:16s} batch {bs}: " + " | ".join(row)
        if True in feats:
            a, f = feats[True], feats[False]
            rel = np.abs(a - f).max() / (np.abs(f).max() + 1e-12)
            line += f" | amp vs fp32 max rel diff {rel:.1e}"
        print(line, flush=True)
    if dev.startswith("cuda"):
        import tempfile

        from transformers import Wav2Vec2Config, Wav2Vec2Model

        wav = (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)
        out = {}
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            large = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16}
            cfg = Wav2Vec2Config(
                **large, intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True
            )
            Wav2Vec2Model(cfg).save_pretrained(tmp)  # a large-sized model, random weights
            for amp in (False,):  # speech models run float32 (see hf_audio.py)
                b = create_backbone("wav2vec2-large-robust", weights=tmp, device=dev, amp=amp)
                b(wav)
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(20):
                    out[amp], _ = b(wav)
                _sync(dev)
                dt = (time.perf_counter() - t0) / 20
                tag = "amp " if amp else "fp32"
                print(
                    f"wav2vec2-large-size {tag}: {4 / dt:7.1f} s of audio/s ({dt * 1000:.1f} ms per 4 s clip)"
                )
        f32 = out[False]
        print(f"  all 25 states float16-storable: {bool(np.isfinite(f32.astype(np.float16)).all())}")
    if args.oom_check and dev.startswith("cuda"):
        b = create_backbone("emofan", weights="none", device=dev, batch_size=16384)
        crops = rng.integers(0, 255, (16384, 256, 256, 3), dtype=np.uint8)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            b(crops)
            _sync(dev)
        msgs = [str(m.message) for m in w if "out of memory" in str(m.message)]
        print(
            f"OOM check: emofan started at batch 16384, ended at {b.runtime.batch_size} after"
            f" {len(msgs)} halvings, {len(crops) / (time.perf_counter() - t0):.0f} f/s overall"
        )


if __name__ == "__main__":
    main()
