"""AVEC 2019 CES (SEWA): in-the-wild video chats, time-continuous valence and arousal.

Layout of the challenge release::

    <root>/audio/Train_DE_01.wav
    <root>/video/Train_DE_01.avi        (or .mp4)
    <root>/labels/Train_DE_01.csv       one row per label frame

Recording names are ``<Partition>_<Culture>_<NN>`` with partitions Train / Devel / Test
(the official partitions) and cultures DE, HU (train and devel) and CN (test only).
Label files hold a time column (``timestamp``/``timeStamp``/``time``, seconds) and
``arousal`` and ``valence`` in [-1, 1] at the label rate (10 Hz; ``;`` or ``,``
separated). Test labels are not public: those recordings carry no labels, and COLD,
like every paper on this corpus, reports on Devel.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._io import check_range, fail, media_index, read_csv, require_dir, require_numeric
from avx.corpora.base import CORPORA, ContinuousLabels, CorpusCard, CorpusMetadata
from avx.corpora.protocols import official

NAME = re.compile(r"^(?P<part>Train|Devel|Test)_(?P<culture>DE|HU|CN)_(?P<n>\d{2})$")
TIME_COLUMNS = ("timestamp", "time", "frametime")
DIMENSIONS = ["arousal", "valence"]


def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(times [T], values [T, 2])`` of one label file, checked for range and order."""
    df = read_csv(path, "continuous labels", sep=None)
    cols = {c.lower(): c for c in df.columns}
    time_col = next((cols[c] for c in TIME_COLUMNS if c in cols), None)
    if time_col is None:
        raise fail(path, f"no time column (one of {', '.join(TIME_COLUMNS)})")
    if missing := [d for d in DIMENSIONS if d not in cols]:
        raise fail(path, f"lacks column(s) {', '.join(missing)}")
    require_numeric(path, df, [time_col, *(cols[d] for d in DIMENSIONS)])
    times = df[time_col].to_numpy(np.float64)
    if len(times) > 1 and (np.diff(times) <= 0).any():
        i = int(np.flatnonzero(np.diff(times) <= 0)[0]) + 2
        raise fail(path, "timestamps do not increase", i)
    values = df[[cols[d] for d in DIMENSIONS]].to_numpy(np.float32)
    check_range(path, values, -1.0, 1.0, "label")
    return times, values


def load_avec2019_ces(root: Path) -> CorpusMetadata:
    root = require_dir(root)
    audio = media_index(root, ["audio/*.wav"])
    video = media_index(root, ["video/*.avi", "video/*.mp4"])
    labels = media_index(root, ["labels/*.csv"])
    names = sorted(set(audio) | set(video) | set(labels))
    if not names:
        raise fail(root, "no recordings (expected audio/, video/ and labels/ with <Part>_<CC>_NN files)")
    rows, values, times, rates = [], [], [], []
    for name in names:
        m = NAME.match(name)
        if not m:
            where = root / (audio.get(name) or video.get(name) or labels[name])
            raise fail(where, f"recording name '{name}' is not <Train|Devel|Test>_<DE|HU|CN>_NN")
        if name in labels:
            t, v = read_labels(root / labels[name])
            if len(t) > 1:
                rates.append(1.0 / float(np.median(np.diff(t))))
        else:
            t, v = np.zeros(0), np.zeros((0, len(DIMENSIONS)), np.float32)
        rows.append(
            {
                "id": name,
                "speaker": name,
                "duration": float(t[-1]) if len(t) else float("nan"),
                "audio_path": audio.get(name, ""),
                "video_path": video.get(name, ""),
                "culture": m["culture"],
                "partition": m["part"].lower(),
                "labelled": bool(len(t)),
            }
        )
        values.append(v)
        times.append(t)
    samples = pd.DataFrame(rows)
    partition = official(samples["partition"].tolist(), source="AVEC 2019 CES Train/Devel/Test")
    rate = round(float(np.median(rates)), 3) if rates else 10.0
    return CorpusMetadata(
        name="avec2019-ces",
        samples=samples,
        continuous=ContinuousLabels(DIMENSIONS, rate, values, times),
        protocols={partition.name: partition},
        default_protocol=partition.name,
        attrs={"source": "AVEC 2019 CES (SEWA database)", "licence": "SEWA EULA"},
    )


CORPORA.register(
    CorpusCard(
        "avec2019-ces",
        load_avec2019_ces,
        modalities="audio, video",
        labels="time-continuous arousal/valence in [-1, 1] (10 Hz), culture",
        layout="audio/<Part>_<CC>_NN.wav, video/*.avi|mp4, labels/*.csv",
    )
)
