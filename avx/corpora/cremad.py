"""CREMA-D (Cao et al., 2014): 7,442 clips by 91 actors, rated as voice, face and AV.

Official repository layout (CheyneyComputerScience/CREMA-D)::

    <root>/AudioWAV/<id>.wav                 16 kHz mono speech
    <root>/VideoFlash/<id>.flv               (mp4 copies are accepted too)
    <root>/processedResults/tabulatedVotes.csv
    <root>/VideoDemographics.csv
    <root>/SentenceFilenames.csv             (clip list; optional)

``<id>`` is ``<actor>_<sentence>_<emotion>_<level>``, e.g. ``1001_IEO_NEU_XX``. In
tabulatedVotes the row id is 100000 * queryType + clip number, queryType 1 = voice-only,
2 = face-only, 3 = audio-visual; columns A, D, F, H, N, S are vote counts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from avx.corpora._io import check_range, check_unique, fail, read_csv, require_dir
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata
from avx.corpora.protocols import speaker_trials

CLASS_CODES = ("A", "D", "F", "H", "N", "S")
CLASS_NAMES = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
FILE_EMOTIONS = {"ANG": 0, "DIS": 1, "FEA": 2, "HAP": 3, "NEU": 4, "SAD": 5}
LEVELS = ("LO", "MD", "HI", "XX")
QUERY_TYPES = {1: "voice", 2: "face", 3: "av"}
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
VIDEO_DIRS = ("VideoFlash", "VideoMP4")
VIDEO_EXTS = (".flv", ".mp4")
VOTES_FILES = ("processedResults/tabulatedVotes.csv", "tabulatedVotes.csv")
"""The official place first; a flat copy of the metadata files is accepted too."""


def parse_clip_id(clip_id: str, source: Path | str = "CREMA-D") -> dict[str, object]:
    """Fields encoded in a CREMA-D file name ``<actor>_<sentence>_<emotion>_<level>``."""
    parts = clip_id.split("_")
    if len(parts) != 4 or not parts[0].isdigit():
        raise fail(source, f"clip name '{clip_id}' is not <actor>_<sentence>_<emotion>_<level>")
    actor, sentence, emotion, level = parts
    if sentence not in SENTENCES:
        raise fail(source, f"clip '{clip_id}': unknown sentence code '{sentence}'")
    if emotion not in FILE_EMOTIONS:
        raise fail(source, f"clip '{clip_id}': unknown emotion code '{emotion}'")
    if level not in LEVELS:
        raise fail(source, f"clip '{clip_id}': unknown level code '{level}'")
    return {
        "speaker": actor,
        "sentence": sentence,
        "sentence_text": SENTENCES[sentence],
        "intended": FILE_EMOTIONS[emotion],
        "level": level,
    }


def _list_media(root: Path) -> tuple[set[str], dict[str, str]]:
    """Audio stems and stem -> video path, from one directory listing each (no per-clip stat)."""
    audio_dir = root / "AudioWAV"
    audio = {p.stem for p in audio_dir.glob("*.wav")} if audio_dir.is_dir() else set()
    video: dict[str, str] = {}
    for d in reversed(VIDEO_DIRS):  # VideoFlash wins over VideoMP4
        for ext in reversed(VIDEO_EXTS):  # .flv wins over .mp4
            if (root / d).is_dir():
                video.update({p.stem: f"{d}/{p.name}" for p in (root / d).glob(f"*{ext}")})
    return audio, video


def _votes_path(root: Path) -> Path:
    for rel in VOTES_FILES:
        if (root / rel).exists():
            return root / rel
    return root / VOTES_FILES[0]


def _votes(
    path: Path, df: pd.DataFrame, ids: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Vote counts and mean intensity per rater modality from tabulatedVotes.csv."""
    row_ids = pd.to_numeric(df.iloc[:, 0], errors="coerce")
    if row_ids.isna().any():
        i = int(np.flatnonzero(row_ids.isna().to_numpy())[0])
        raise fail(path, f"row id {df.iloc[i, 0]!r} is not 100000*queryType + clip number", i + 1)
    check_unique(path, row_ids.astype(np.int64).astype(str).tolist(), "row id")
    query = (row_ids // 100000).astype(int).to_numpy()
    if bad := sorted(set(query) - set(QUERY_TYPES)):
        i = int(np.flatnonzero(query == bad[0])[0])
        raise fail(path, f"unknown queryType {bad[0]} (1 voice, 2 face, 3 audio-visual)", i + 1)
    counts_all = df[list(CLASS_CODES)].to_numpy()
    check_range(path, counts_all, 0, np.inf, "vote count")
    if (counts_all != np.round(counts_all)).any():
        i = int(np.argwhere(counts_all != np.round(counts_all))[0][0])
        raise fail(path, "vote counts must be whole numbers", i + 1)
    names = df["fileName"].astype(str).to_numpy()
    check_unique(path, [f"{q}:{n}" for q, n in zip(query, names, strict=True)], "(queryType, fileName)")
    id_pos = {cid: i for i, cid in enumerate(ids)}
    if unknown := [i for i, n in enumerate(names) if n not in id_pos]:
        raise fail(path, f"clip '{names[unknown[0]]}' is not in the clip list", unknown[0] + 1)
    intensity_col = pd.to_numeric(df.get("meanEmoResp", pd.Series(np.nan, index=df.index)), errors="coerce")
    counts, intensity = {}, {}
    for qt, rater in QUERY_TYPES.items():
        sel = np.flatnonzero(query == qt)
        pos = np.array([id_pos[n] for n in names[sel]], dtype=np.int64)
        c = np.zeros((len(ids), len(CLASS_CODES)), dtype=np.int32)
        c[pos] = counts_all[sel].astype(np.int32)
        m = np.full(len(ids), np.nan, dtype=np.float32)
        m[pos] = intensity_col.to_numpy()[sel]
        counts[rater], intensity[rater] = c, m
    return counts, intensity


def load_cremad(root: Path) -> CorpusMetadata:
    """Read CREMA-D metadata (votes, intensities, demographics, clip list)."""
    root = require_dir(root)
    demo_path = root / "VideoDemographics.csv"
    demo = read_csv(demo_path, "actor demographics", columns=["ActorID"], numeric=["ActorID"])
    check_unique(demo_path, demo["ActorID"].astype(int).astype(str), "ActorID")
    votes_path = _votes_path(root)
    votes_df = read_csv(
        votes_path, "tabulated votes", columns=["fileName", *CLASS_CODES], numeric=CLASS_CODES
    )
    listing = root / "SentenceFilenames.csv"
    if listing.exists():
        ids = read_csv(listing, "clip list", columns=["Filename"])["Filename"].astype(str).tolist()
        source = listing
    else:
        ids, source = sorted(votes_df["fileName"].astype(str).unique()), votes_path
    check_unique(source, ids, "clip")
    parsed = [parse_clip_id(cid, source) for cid in ids]
    votes, intensity = _votes(votes_path, votes_df, ids)

    audio, video = _list_media(root)
    rows = []
    for cid, meta in zip(ids, parsed, strict=True):
        duration = float("nan")
        if cid in audio:
            # A corrupt header leaves NaN here; extraction reports it for this clip.
            with contextlib.suppress(RuntimeError):
                duration = sf.info(str(root / "AudioWAV" / f"{cid}.wav")).duration
        rows.append(
            {
                "id": cid,
                **meta,
                "duration": duration,
                "audio_path": f"AudioWAV/{cid}.wav" if cid in audio else "",
                "video_path": video.get(cid, ""),
            }
        )
    samples = pd.DataFrame(rows)
    demo = demo.rename(columns=str.lower).rename(columns={"actorid": "speaker"})
    demo["speaker"] = demo["speaker"].astype(int).astype(str)
    if missing := sorted(set(samples["speaker"]) - set(demo["speaker"])):
        raise fail(demo_path, f"no demographics for actor {missing[0]}")
    samples = samples.merge(demo, on="speaker", how="left")
    samples["transcript"] = samples["sentence_text"]  # the scripted sentence is what is spoken
    columns = ["id", "speaker", "duration", "audio_path", "video_path", "transcript", "sentence", "level"]
    columns += [c for c in ("age", "sex", "race", "ethnicity") if c in samples]
    trials = speaker_trials(samples["speaker"].tolist(), k=5, seed=0)
    return CorpusMetadata(
        name="cremad",
        samples=samples[columns],
        class_names=CLASS_NAMES,
        votes=votes,
        rater_intensity=intensity,
        categorical={"intended": samples["intended"].to_numpy(dtype=np.int16)},
        intended_level=samples["level"].to_numpy(dtype=object),
        protocols={trials.name: trials},
        default_protocol=trials.name,
        attrs={"source": "CREMA-D (CheyneyComputerScience/CREMA-D)", "licence": "ODbL 1.0 / DbCL 1.0"},
    )


CORPORA.register(
    CorpusCard(
        "cremad",
        load_cremad,
        modalities="audio, video",
        labels="votes per rater modality (voice/face/av), intensity, intended emotion+level",
        layout=(
            "AudioWAV/*.wav, VideoFlash/*.flv|mp4, processedResults/tabulatedVotes.csv, VideoDemographics.csv"
        ),
    )
)
