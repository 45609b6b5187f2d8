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

from avx.corpora.base import CORPORA, CorpusMetadata
from avx.errors import AvxError

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
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def parse_clip_id(clip_id: str) -> dict[str, object]:
    """Fields encoded in a CREMA-D file name."""
    try:
        actor, sentence, emotion, level = clip_id.split("_")
        return {
            "speaker": actor,
            "sentence": sentence,
            "sentence_text": SENTENCES[sentence],
            "intended": FILE_EMOTIONS[emotion],
            "level": level if level in LEVELS else "XX",
        }
    except (ValueError, KeyError):
        raise AvxError(f"CREMA-D: cannot parse clip name '{clip_id}'") from None


def speaker_split(speakers: pd.Series, *, seed: int = SPLIT_SEED) -> np.ndarray:
    """Speaker-disjoint train/dev/test (70/15/15 % of speakers), seeded permutation."""
    unique = np.array(sorted(speakers.unique()))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = round(SPLIT_FRACTIONS[0] * len(unique))
    n_dev = round(SPLIT_FRACTIONS[1] * len(unique))
    assign = {}
    for rank, i in enumerate(order):
        assign[unique[i]] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"
    return speakers.map(assign).to_numpy(dtype=object)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise AvxError(f"{path}: missing ({what})")
    try:
        return pd.read_csv(path)
    except Exception as e:
        raise AvxError(f"{path}: unreadable CSV ({e})") from None


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


@CORPORA.register("cremad")
def load_cremad(root: Path) -> CorpusMetadata:
    """Read CREMA-D metadata (votes, demographics, clip list) from its official layout."""
    root = Path(root)
    if not root.is_dir():
        raise AvxError(f"{root}: corpus root is not a directory")
    votes_df = _read_csv(root / "processedResults" / "tabulatedVotes.csv", "tabulated votes")
    demo = _read_csv(root / "VideoDemographics.csv", "actor demographics")
    listing = root / "SentenceFilenames.csv"
    if listing.exists():
        ids = _read_csv(listing, "clip list")["Filename"].astype(str).tolist()
    else:
        ids = sorted(votes_df["fileName"].astype(str).unique())

    audio, video = _list_media(root)
    rows = []
    for cid in ids:
        meta = parse_clip_id(cid)
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
    demo["speaker"] = demo["speaker"].astype(str)
    samples = samples.merge(demo, on="speaker", how="left")
    samples["split"] = speaker_split(samples["speaker"])

    query = votes_df.iloc[:, 0].astype(int) // 100000
    counts_by_rater = {}
    id_pos = {cid: i for i, cid in enumerate(ids)}
    for qt, rater in QUERY_TYPES.items():
        sub = votes_df[query == qt]
        counts = np.zeros((len(ids), len(CLASS_CODES)), dtype=np.int32)
        pos = sub["fileName"].astype(str).map(id_pos)
        keep = pos.notna().to_numpy()
        counts[pos[keep].astype(int).to_numpy()] = sub.loc[keep, list(CLASS_CODES)].to_numpy()
        counts_by_rater[rater] = counts

    return CorpusMetadata(
        name="cremad",
        samples=samples[
            [
                "id",
                "speaker",
                "duration",
                "audio_path",
                "video_path",
                "sentence",
                "sentence_text",
                "level",
                "age",
                "sex",
                "race",
                "ethnicity",
                "split",
            ]
        ],
        class_names=CLASS_NAMES,
        votes=counts_by_rater,
        intended=samples["intended"].to_numpy(dtype=np.int16),
        intended_level=samples["level"].to_numpy(dtype=object),
        protocols={
            "split": f"speaker-disjoint train/dev/test, {SPLIT_FRACTIONS} of actors, seed {SPLIT_SEED}"
        },
        attrs={"source": "CREMA-D (CheyneyComputerScience/CREMA-D)", "licence": "ODbL 1.0 / DbCL 1.0"},
    )
