"""RAVDESS (Livingstone & Russo, 2018): 24 actors, speech and song, AV / video / audio files.

Official layout (the zips unpacked into one root; any nesting above ``Actor_XX``)::

    <root>/**/Actor_01/01-01-03-01-01-01-01.mp4     audio-visual
    <root>/**/Actor_01/02-01-03-01-01-01-01.mp4     video-only
    <root>/**/Actor_01/03-01-03-01-01-01-01.wav     audio-only

File name ``MM-VV-EE-II-SS-RR-AA``: modality (01 AV, 02 video-only, 03 audio-only),
vocal channel (01 speech, 02 song), emotion (01 neutral ... 08 surprised), intensity
(01 normal, 02 strong; neutral has no strong), statement (01 "Kids are talking by the
door", 02 "Dogs are sitting by the door"), repetition (01/02), actor (01-24; odd male).

One sample per recording, with id ``VV-EE-II-SS-RR-AA`` (the name without its modality
code), so labs that downloaded only the audio or only the video get the same ids. The
video is the AV file (the video-only file when the AV one is absent); the audio is the
audio-only wav, else the AV file's own track. Labels: the instructed (``intended``)
emotion and intensity; RAVDESS's perceptual validation ratings are not in the media
release and are not read here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._io import fail, require_dir
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata
from avx.corpora.protocols import speaker_folds, speaker_trials

CLASS_NAMES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
MODALITIES = {"01": "av", "02": "video", "03": "audio"}
CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
SONG_EMOTIONS = {"01", "02", "03", "04", "05", "06"}
NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def parse_name(path: Path) -> dict[str, object]:
    """Fields of a RAVDESS file name; unknown codes are an error naming the file."""
    m = NAME.match(path.stem)
    if not m:
        raise fail(path, "file name is not MM-VV-EE-II-SS-RR-AA")
    mod, chan, emo, inten, stmt, rep, actor = m.groups()
    for code, table, what in (
        (mod, MODALITIES, "modality"),
        (chan, CHANNELS, "vocal channel"),
        (inten, INTENSITIES, "intensity"),
        (stmt, STATEMENTS, "statement"),
        (rep, {"01": 1, "02": 2}, "repetition"),
    ):
        if code not in table:
            raise fail(path, f"unknown {what} code '{code}'")
    if not 1 <= int(emo) <= len(CLASS_NAMES):
        raise fail(path, f"unknown emotion code '{emo}'")
    if not 1 <= int(actor) <= 24:
        raise fail(path, f"unknown actor code '{actor}'")
    if emo == "01" and inten == "02":
        raise fail(path, "neutral has no strong intensity in RAVDESS")
    if chan == "02" and emo not in SONG_EMOTIONS:
        raise fail(path, f"song recordings have no emotion '{CLASS_NAMES[int(emo) - 1]}'")
    return {
        "key": "-".join(m.groups()[1:]),
        "modality": MODALITIES[mod],
        "channel": CHANNELS[chan],
        "emotion": int(emo) - 1,
        "intensity": INTENSITIES[inten],
        "statement": stmt,
        "statement_text": STATEMENTS[stmt],
        "repetition": int(rep),
        "actor": actor,
        "sex": "male" if int(actor) % 2 else "female",
    }


def load_ravdess(root: Path) -> CorpusMetadata:
    root = require_dir(root)
    files = sorted(p for p in root.glob("**/Actor_*/*") if p.suffix.lower() in (".mp4", ".wav"))
    files = [p for p in files if not p.name.startswith("._")]
    if not files:
        raise fail(root, "no RAVDESS files (expected **/Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4|wav)")
    recs: dict[str, dict[str, object]] = {}
    for p in files:
        f = parse_name(p)
        if p.parent.name != f"Actor_{f['actor']}":
            raise fail(p, f"actor code {f['actor']} does not match its folder {p.parent.name}")
        expected = ".wav" if f["modality"] == "audio" else ".mp4"
        if p.suffix.lower() != expected:
            raise fail(p, f"modality {f['modality']} should be a {expected} file")
        rec = recs.setdefault(str(f["key"]), {**f, "files": {}})
        if f["modality"] in rec["files"]:  # type: ignore[operator]
            raise fail(p, f"duplicate recording (also {rec['files'][f['modality']]})")  # type: ignore[index]
        rec["files"][f["modality"]] = p.relative_to(root).as_posix()  # type: ignore[index]
    rows = []
    for key, r in sorted(recs.items()):
        fl: dict[str, str] = r["files"]  # type: ignore[assignment]
        rows.append(
            {
                "id": key,
                "speaker": r["actor"],
                "duration": float("nan"),
                "audio_path": fl.get("audio", fl.get("av", "")),
                "video_path": fl.get("av", fl.get("video", "")),
                "channel": r["channel"],
                "intensity": r["intensity"],
                "statement": r["statement"],
                "transcript": r["statement_text"],  # the scripted statement is what is said or sung
                "repetition": r["repetition"],
                "sex": r["sex"],
                "emotion": r["emotion"],
            }
        )
    samples = pd.DataFrame(rows)
    speakers = samples["speaker"].tolist()
    protocols = {}
    if samples["speaker"].nunique() == 24:
        folds = speaker_folds(speakers, block=4, n_folds=5, name="actor-folds")
        protocols[folds.name] = folds
    trials = speaker_trials(speakers, k=5, seed=0)
    protocols[trials.name] = trials
    return CorpusMetadata(
        name="ravdess",
        samples=samples.drop(columns=["emotion"]),
        class_names=CLASS_NAMES,
        categorical={"intended": samples["emotion"].to_numpy(dtype=np.int16)},
        intended_level=samples["intensity"].to_numpy(dtype=object),
        protocols=protocols,
        default_protocol=next(iter(protocols)),
        attrs={"source": "RAVDESS (Zenodo 1188976)", "licence": "CC BY-NC-SA 4.0"},
    )


CORPORA.register(
    CorpusCard(
        "ravdess",
        load_ravdess,
        modalities="audio, video",
        labels="intended emotion (8) and intensity",
        layout="**/Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4|wav",
    )
)
