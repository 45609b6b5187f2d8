"""The synthetic ``avx demo`` corpus: CREMA-D's layout plus valence/arousal labels.

Reads everything the ``cremad`` adapter reads, and two files only the demo writes, so
the regression and binned-classification paths of ``avx fuse`` run on it too:

    <root>/avx_demo/dimensions.csv   id, valence, arousal            (per clip, [-1, 1])
    <root>/avx_demo/continuous.csv   id, time, valence, arousal      (per frame, 10 Hz)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from avx.corpora._io import fail, read_csv
from avx.corpora.base import CORPORA, ContinuousLabels, CorpusCard, CorpusMetadata, Dimensions
from avx.corpora.cremad import load_cremad

DIMENSIONS = ("valence", "arousal")
CONTINUOUS_RATE = 10.0


def load_demo(root: Path) -> CorpusMetadata:
    meta = load_cremad(root)
    ids = meta.samples["id"].astype(str).tolist()
    row = {sid: i for i, sid in enumerate(ids)}
    dims_path, cont_path = root / "avx_demo" / "dimensions.csv", root / "avx_demo" / "continuous.csv"
    dims = read_csv(dims_path, "per-clip valence/arousal", columns=["id", *DIMENSIONS], numeric=DIMENSIONS)
    dims = dims.astype({"id": str}).set_index("id").reindex(ids)
    if dims[list(DIMENSIONS)].isna().any().any():
        raise fail(dims_path, "a clip has no valence/arousal row")
    cont = read_csv(
        cont_path,
        "per-frame valence/arousal",
        columns=["id", "time", *DIMENSIONS],
        numeric=["time", *DIMENSIONS],
    ).astype({"id": str})
    values: list[np.ndarray] = [np.zeros((0, 2), np.float32)] * len(ids)
    times: list[np.ndarray] = [np.zeros(0)] * len(ids)
    for sid, g in cont.groupby("id", sort=False):
        if sid not in row:
            raise fail(cont_path, f"unknown clip id {sid!r}")
        values[row[sid]] = g[list(DIMENSIONS)].to_numpy(np.float32)
        times[row[sid]] = g["time"].to_numpy(np.float64)
    return replace(
        meta,
        name="avx-demo",
        dimensions=Dimensions(list(DIMENSIONS), dims[list(DIMENSIONS)].to_numpy(np.float32), -1.0, 1.0),
        continuous=ContinuousLabels(list(DIMENSIONS), CONTINUOUS_RATE, values, times),
    )


CORPORA.register(
    CorpusCard(
        "avx-demo",
        load_demo,
        modalities="audio, video (synthetic)",
        labels="CREMA-D votes + per-clip and per-frame valence/arousal",
        layout="CREMA-D layout + avx_demo/dimensions.csv, avx_demo/continuous.csv",
    )
)
