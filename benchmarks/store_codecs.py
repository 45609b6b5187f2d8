"""Feature-store codecs and read speed: which compression a stream's chunks should use.

Features come from a store built here (the demo corpus through a small randomly
initialised WavLM, all hidden states, and mobilenetv2 at 10 fps), or from ``--store``.
For each stream, its fp16 frames are re-written into Zarr arrays with the store's chunk
shape under each candidate codec, and the script prints

- size: bytes on disk / raw fp16 bytes (lower is better);
- read: the time to read every frame back as float32, against the baseline of one
  float32 ``.npy`` file per clip loaded with ``np.load`` (ratio > 1: faster than npy);
- ``read_many``: avx's own reader on the store as written, same baseline.

The fp16-vs-bf16 question is answered on the same data: the largest magnitude (fp16
overflows above 65504) and the relative error each format adds to the float32 features.

With ``--cold`` the page cache is dropped before every timed read, so both sides read
from the disk (needs root on Linux): the case of a first pass over a store on NFS.

Usage: uv run python benchmarks/store_codecs.py [--store S.zarr] [--clips 48] [--repeats 5] [--cold]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from rich.console import Console
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from avx import open_store


def build_store(tmp: Path, clips: int) -> Path:
    from avx.demo.corpus import make_demo_corpus
    from avx.extract.backbones.hf_audio import save_random_model
    from avx.extract.faces import FaceConfig
    from avx.extract.media import FrameSampling
    from avx.extract.run import ExtractOptions, extract

    corpus = make_demo_corpus(tmp / "corpus", n_clips=clips, seed=0)
    small = {"num_hidden_layers": 4, "hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536}
    save_random_model("wavlm", tmp / "wavlm", **small)
    opts = ExtractOptions(
        backbones=("wavlm", "mobilenetv2"),
        weights=(f"wavlm={tmp / 'wavlm'}", "none"),
        faces=FaceConfig(min_face_size=40, sampling=FrameSampling("fps", fps=10.0)),
    )
    extract("cremad", corpus, tmp / "bench.zarr", opts, console=Console(quiet=True))
    return tmp / "bench.zarr"


CODECS: dict[str, list[Any]] = {
    "raw": [Crc32cCodec()],
    "zstd-1": [ZstdCodec(level=1), Crc32cCodec()],
    "zstd-3": [ZstdCodec(level=3), Crc32cCodec()],
    "blosc-zstd-1-shuffle": [
        BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2),
        Crc32cCodec(),
    ],
    "blosc-zstd-3-shuffle": [
        BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2),
        Crc32cCodec(),
    ],
    "blosc-lz4-5-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2), Crc32cCodec()],
}


COLD = False
"""``--cold``: drop the page cache before every timed read (root on Linux), so both sides
read from the disk, as a first epoch on a shared NFS or object store does."""


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def best(f: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if COLD:
            drop_caches()
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store")
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each read (root)")
    args = ap.parse_args()
    global COLD
    COLD = args.cold
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        store = open_store(args.store or build_store(tmp, args.clips))
        for name in [s for s in store.streams if s != "faces"]:
            compare(store, name, tmp, args.repeats)


def compare(store: Any, name: str, tmp: Path, repeats: int) -> None:
    """Print one stream's table: the npy baseline, ``read_many`` and each codec."""
    stream = store.stream(name)
    ids = stream.committed_ids
    clips = stream.read_many(ids)
    data = np.concatenate(clips)
    lengths = np.cumsum([0] + [len(c) for c in clips])
    chunk_rows = stream._part(0)["data"].chunks[0]
    n = len(clips)
    print(
        f"\n{name}: {n} clips, {len(data)} frames of {data.shape[1:]} {data.dtype},"
        f" chunks of {chunk_rows} frames, raw {data.nbytes / 2**20:.1f} MiB"
    )
    npy = tmp / f"npy-{name.replace('/', '_')}"  # the baseline: one float32 npy per clip
    npy.mkdir()
    for i, c in enumerate(clips):
        np.save(npy / f"{i}.npy", c.astype(np.float32))
    t_npy = best(lambda: [np.load(npy / f"{i}.npy") for i in range(n)], repeats)
    size = du(npy) / data.nbytes
    print(f"  {'npy float32, one per clip':26s} size {size:5.2f}  read {t_npy * 1e3:7.1f} ms")
    t_many = best(lambda: [a.astype(np.float32) for a in stream.read_many(ids)], repeats)
    print(f"  {'read_many (store as is)':37s} read {t_many * 1e3:7.1f} ms  ratio {t_npy / t_many:.2f}")
    for codec, comps in CODECS.items():
        path = tmp / f"{codec}-{name.replace('/', '_')}.zarr"
        arr = zarr.create_array(
            zarr.storage.LocalStore(path), shape=data.shape, chunks=(chunk_rows, *data.shape[1:]),
            dtype=data.dtype, serializer=BytesCodec(), compressors=comps,
        )  # fmt: skip
        arr[...] = data
        ro = zarr.open_array(zarr.storage.LocalStore(path, read_only=True))

        def read(ro: zarr.Array = ro) -> list[np.ndarray]:
            block = np.asarray(ro[...])
            return [block[lengths[i] : lengths[i + 1]].astype(np.float32) for i in range(n)]

        t_read = best(read, repeats)
        size = du(path) / data.nbytes
        print(f"  {codec:26s} size {size:5.2f}  read {t_read * 1e3:7.1f} ms  ratio {t_npy / t_read:.2f}")
    import torch

    f32 = data.astype(np.float32)
    bf16 = torch.from_numpy(f32).to(torch.bfloat16).float().numpy()
    scale = np.abs(f32).max()
    print(
        f"  largest |value| {scale:.3g} (fp16 max 65504); relative error of bf16 vs fp16 features:"
        f" {np.abs(bf16 - f32).max() / scale:.2e}"
    )


if __name__ == "__main__":
    main()
