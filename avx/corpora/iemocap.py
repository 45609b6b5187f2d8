"""IEMOCAP (Busso et al., 2008): 5 dyadic sessions, 10 actors, utterance-level labels.

Official layout (``IEMOCAP_full_release``)::

    <root>/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt    labels per utterance
    <root>/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    <root>/Session1/dialog/avi/DivX/Ses01F_impro01.avi          one video per dialogue
    <root>/Session1/dialog/transcriptions/Ses01F_impro01.txt    (optional)

An EmoEvaluation block starts with ``[start - end]<TAB>utterance<TAB>code<TAB>[V, A, D]``
(consensus code ``neu/hap/sad/ang/sur/fea/dis/fru/exc/oth``, ``xxx`` = no agreement;
valence, activation, dominance on 1-5), followed by one line per categorical
evaluation ``C-E2:<TAB>Frustration; Anger;<TAB>(...)``. Votes are counted from the
external evaluators' lines (``C-E*``; each category an evaluator ticks is one vote);
the actors' self-evaluations (``C-F*``/``C-M*``) are not votes. The raters watched the
video with sound, so the votes are the ``av`` rater modality.

Speaker = session + the utterance speaker's gender (``Ses01F``). Video: the dialogue's
avi with ``video_start``/``video_end`` of the utterance.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._io import check_range, fail, media_index, require_dir
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata, Dimensions
from avx.corpora.protocols import leave_one_session_out, speaker_trials

CLASS_NAMES = [
    "anger",
    "happiness",
    "excitement",
    "sadness",
    "frustration",
    "fear",
    "surprise",
    "disgust",
    "neutral",
    "other",
]
CODES = {"ang": 0, "hap": 1, "exc": 2, "sad": 3, "fru": 4, "fea": 5, "sur": 6, "dis": 7, "neu": 8, "oth": 9}
NO_AGREEMENT = "xxx"
WORDS = {
    "anger": 0,
    "happiness": 1,
    "excited": 2,
    "sadness": 3,
    "frustration": 4,
    "fear": 5,
    "surprise": 6,
    "disgust": 7,
    "neutral": 8,
    "neutral state": 8,
    "other": 9,
}
HEADER = re.compile(
    r"^\[(?P<start>[\d.]+) - (?P<end>[\d.]+)\]\t(?P<utt>Ses\d\d[FM]_\S+)\t(?P<code>\w+)\t"
    r"\[(?P<v>[\d.]+), (?P<a>[\d.]+), (?P<d>[\d.]+)\]\s*$"
)
CATEGORICAL = re.compile(r"^C-(?P<who>[EFM]\d+):\t(?P<cats>[^\t]*)")
UTTERANCE = re.compile(r"^(?P<session>Ses\d\d)[FM]_.+_(?P<gender>[FM])\d+$")
TRANSCRIPT = re.compile(r"^(?P<utt>Ses\d\d[FM]_\S+) \[[^\]]*\]: ?(?P<text>.*)$")
DIMENSIONS = ["valence", "arousal", "dominance"]


def _category(word: str, path: Path, line_no: int) -> int | None:
    word = word.strip().lower()
    if not word:
        return None
    if word.startswith("other"):
        return WORDS["other"]
    if word not in WORDS:
        raise fail(path, f"unknown emotion category '{word}'", f"line {line_no}")
    return WORDS[word]


def parse_evaluation(path: Path) -> list[dict[str, object]]:
    """All utterance blocks of one EmoEvaluation file."""
    out: list[dict[str, object]] = []
    for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.startswith("["):
            m = HEADER.match(line)
            if not m:
                raise fail(
                    path,
                    "malformed utterance header (expected [start - end] id code [V, A, D])",
                    f"line {no}",
                )
            code = m["code"]
            if code != NO_AGREEMENT and code not in CODES:
                raise fail(path, f"unknown consensus code '{code}'", f"line {no}")
            vad = [float(m[k]) for k in "vad"]
            check_range(path, np.array(vad), 1.0, 5.0, "valence/arousal/dominance", rows=[f"line {no}"] * 3)
            out.append(
                {
                    "id": m["utt"],
                    "start": float(m["start"]),
                    "end": float(m["end"]),
                    "consensus": CODES.get(code, -1),
                    "vad": vad,
                    "votes": np.zeros(len(CLASS_NAMES), np.int32),
                    "line": no,
                }
            )
        elif (m := CATEGORICAL.match(line)) and out:
            if not m["who"].startswith("E"):
                continue  # the actors' self-evaluations are not votes
            for word in m["cats"].split(";"):
                c = _category(word, path, no)
                if c is not None:
                    out[-1]["votes"][c] += 1  # type: ignore[index]
    return out


def _transcripts(root: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for p in sorted(root.glob("Session*/dialog/transcriptions/*.txt")):
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            if m := TRANSCRIPT.match(line.strip()):
                texts[m["utt"]] = m["text"].strip()
    return texts


def load_iemocap(root: Path) -> CorpusMetadata:
    root = require_dir(root)
    files = sorted(root.glob("Session[1-5]/dialog/EmoEvaluation/*.txt"))
    if not files:
        raise fail(root, "no Session*/dialog/EmoEvaluation/*.txt label files (is this IEMOCAP_full_release?)")
    wavs = media_index(root, ["Session*/sentences/wav/*/*.wav"])
    avis = media_index(root, ["Session*/dialog/avi/DivX/*.avi", "Session*/dialog/avi/*.avi"])
    texts = _transcripts(root)
    rows, seen = [], {}
    for path in files:
        for u in parse_evaluation(path):
            utt = str(u["id"])
            if utt in seen:
                raise fail(path, f"duplicate utterance '{utt}' (also in {seen[utt]})", f"line {u['line']}")
            seen[utt] = path.name
            m = UTTERANCE.match(utt)
            if not m:
                raise fail(
                    path, f"utterance id '{utt}' is not SesNN[FM]_<dialogue>_[FM]NNN", f"line {u['line']}"
                )
            dialog = utt.rsplit("_", 1)[0]
            rows.append(
                {
                    "id": utt,
                    "speaker": f"{m['session']}{m['gender']}",
                    "duration": float(u["end"]) - float(u["start"]),  # type: ignore[operator]
                    "audio_path": wavs.get(utt, ""),
                    "video_path": avis.get(dialog, ""),
                    "video_start": u["start"],
                    "video_end": u["end"],
                    "transcript": texts.get(utt, ""),
                    "session": m["session"],
                    "gender": m["gender"],
                    "dialogue": dialog,
                    "improvised": "_impro" in dialog,
                    "_consensus": u["consensus"],
                    "_vad": u["vad"],
                    "_votes": u["votes"],
                }
            )
    df = pd.DataFrame(rows)
    sessions, speakers = df["session"].tolist(), df["speaker"].tolist()
    protocols = {}
    if df["session"].nunique() >= 3:
        loso = leave_one_session_out(sessions, speakers)
        protocols[loso.name] = loso
    trials = speaker_trials(speakers, k=5, seed=0)
    protocols[trials.name] = trials
    return CorpusMetadata(
        name="iemocap",
        samples=df[[c for c in df.columns if not c.startswith("_")]],
        class_names=CLASS_NAMES,
        votes={"av": np.stack(df["_votes"].to_list())},
        categorical={"consensus": df["_consensus"].to_numpy(dtype=np.int16)},
        dimensions=Dimensions(DIMENSIONS, np.array(df["_vad"].to_list(), dtype=np.float32), 1.0, 5.0),
        protocols=protocols,
        default_protocol=next(iter(protocols)),
        attrs={"source": "IEMOCAP (USC SAIL)", "licence": "IEMOCAP release agreement"},
    )


CORPORA.register(
    CorpusCard(
        "iemocap",
        load_iemocap,
        modalities="audio, video (dialogue-level), text",
        labels="categorical votes (av raters), consensus label, valence/arousal/dominance 1-5",
        layout="Session{1..5}/dialog/EmoEvaluation/*.txt, Session*/sentences/wav/*/*.wav, "
        "Session*/dialog/avi/DivX/*.avi",
    )
)
