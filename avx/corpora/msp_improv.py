"""MSP-IMPROV (Busso et al., 2017): 6 dyadic sessions, 12 actors, crowd-sourced labels.

Official layout::

    <root>/Evaluation.txt
    <root>/Audio/session1/S01A/R/MSP-IMPROV-S01A-F01-R-FM01.wav   (any depth)
    <root>/Video/session1/S01A/R/MSP-IMPROV-S01A-F01-R-FM01.avi   (any depth)

File name ``MSP-IMPROV-S<sentence><emotion>-<gender><session>-<scenario>-<turn>``:
target sentence 01-20 with its scenario emotion (A angry, H happy, S sad, N neutral),
speaker gender and session, and scenario type ``T`` target sentence in the
improvisation, ``S`` other improvised turns, ``P`` natural interaction between
scenarios, ``R`` read. Label files may name the video (``UTD-IMPROV-...``); both
prefixes map to one id.

``Evaluation.txt`` holds one block per turn: a header
``UTD-IMPROV-S01A-F01-R-FM01.avi; A; A:2.67; V:3.33; D:3.00; N:3.67`` (consensus
letter A/H/S/N/O, X = no agreement; mean arousal, valence, dominance, naturalness on
1-5), then one line per evaluator ``<evaluator>; <category>; ...``; each evaluator's
primary category is one vote (words outside angry/happy/sad/neutral count as
``other``, the corpus's fifth category). The raters watched the video with sound, so
the votes are the ``av`` rater modality.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._io import check_range, fail, require_dir
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata, Dimensions
from avx.corpora.protocols import leave_one_session_out, speaker_trials

CLASS_NAMES = ["anger", "happy", "sad", "neutral", "other"]
LETTERS = {"A": 0, "H": 1, "S": 2, "N": 3, "O": 4}
NO_AGREEMENT = "X"
WORDS = {"angry": 0, "anger": 0, "happy": 1, "happiness": 1, "sad": 2, "sadness": 2, "neutral": 3}
SCENARIOS = {"T": "target", "S": "improvised", "P": "natural", "R": "read"}
NAME = re.compile(
    r"(?:MSP|UTD)-IMPROV-S(?P<sentence>\d\d)(?P<emotion>[AHNS])-(?P<gender>[FM])(?P<session>\d\d)"
    r"-(?P<scenario>[A-Z])-(?P<turn>[A-Z]{1,2}\d{2,3})"
)
ATTRS = re.compile(r"\b([AVDN]):\s*([-\d.]+)")
DIMENSIONS = ["arousal", "valence", "dominance", "naturalness"]


def canonical(m: re.Match[str]) -> str:
    return (
        f"MSP-IMPROV-S{m['sentence']}{m['emotion']}-{m['gender']}{m['session']}-{m['scenario']}-{m['turn']}"
    )


def parse_evaluation(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        raise fail(path, "missing (MSP-IMPROV labels)")
    out: list[dict[str, object]] = []
    for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(";")]
        m = NAME.match(fields[0])
        if m:
            if len(fields) < 2 or fields[1] not in {*LETTERS, NO_AGREEMENT}:
                got = fields[1] if len(fields) > 1 else ""
                raise fail(path, f"unknown consensus label '{got}' (A/H/S/N/O/X)", f"line {no}")
            attrs = {k: float(v) for k, v in ATTRS.findall(line)}
            if missing := [k for k in "AVD" if k not in attrs]:
                raise fail(path, f"header lacks attribute(s) {', '.join(missing)}", f"line {no}")
            vals = [attrs.get(k, np.nan) for k in "AVDN"]
            check_range(path, np.array(vals), 1.0, 5.0, "attribute", rows=[f"line {no}"] * 4)
            out.append(
                {
                    "match": m,
                    "consensus": LETTERS.get(fields[1], -1),
                    "dims": vals,
                    "votes": np.zeros(len(CLASS_NAMES), np.int32),
                    "line": no,
                }
            )
        elif out and len(fields) >= 2:
            word = fields[1].lower()
            out[-1]["votes"][WORDS.get(word, LETTERS["O"])] += 1  # type: ignore[index]
        else:
            raise fail(path, "line is neither a turn header nor an evaluation", f"line {no}")
    return out


def _media(root: Path, pattern: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for p in sorted(root.glob(pattern)):
        if (m := NAME.search(p.name)) and not p.name.startswith("._"):
            found.setdefault(canonical(m), p.relative_to(root).as_posix())
    return found


def load_msp_improv(root: Path) -> CorpusMetadata:
    root = require_dir(root)
    path = root / "Evaluation.txt"
    turns = parse_evaluation(path)
    audio, video = _media(root, "**/*.wav"), {**_media(root, "**/*.mp4"), **_media(root, "**/*.avi")}
    rows, seen = [], {}
    for t in turns:
        m: re.Match[str] = t["match"]  # type: ignore[assignment]
        cid = canonical(m)
        if cid in seen:
            raise fail(path, f"duplicate turn '{cid}' (also line {seen[cid]})", f"line {t['line']}")
        seen[cid] = t["line"]
        if m["scenario"] not in SCENARIOS:
            raise fail(path, f"turn '{cid}': unknown scenario code '{m['scenario']}'", f"line {t['line']}")
        scenario = SCENARIOS[m["scenario"]]
        rows.append(
            {
                "id": cid,
                "speaker": f"{m['gender']}{m['session']}",
                "duration": float("nan"),
                "audio_path": audio.get(cid, ""),
                "video_path": video.get(cid, ""),
                "session": f"session{int(m['session'])}",
                "gender": m["gender"],
                "sentence": int(m["sentence"]),
                "scenario": scenario,
                "scenario_emotion": m["emotion"],
                # the scenario's emotion is the actor's intent only for the target sentence
                "_intended": ["A", "H", "S", "N"].index(m["emotion"])
                if scenario in ("target", "read")
                else -1,
                "_consensus": t["consensus"],
                "_dims": t["dims"],
                "_votes": t["votes"],
            }
        )
    df = pd.DataFrame(rows)
    intended = np.array([LETTERS[k] for k in "AHSN"])[np.maximum(df["_intended"].to_numpy(), 0)]
    intended = np.where(df["_intended"].to_numpy() >= 0, intended, -1)
    speakers = df["speaker"].tolist()
    protocols = {}
    trials = speaker_trials(speakers, k=5, seed=0)
    protocols[trials.name] = trials
    if df["session"].nunique() >= 3 and (df.groupby("session")["speaker"].nunique() == 2).all():
        loso = leave_one_session_out(df["session"].tolist(), speakers)
        protocols[loso.name] = loso
    return CorpusMetadata(
        name="msp-improv",
        samples=df[[c for c in df.columns if not c.startswith("_")]],
        class_names=CLASS_NAMES,
        votes={"av": np.stack(df["_votes"].to_list())},
        categorical={
            "consensus": df["_consensus"].to_numpy(dtype=np.int16),
            "intended": intended.astype(np.int16),
        },
        dimensions=Dimensions(DIMENSIONS, np.array(df["_dims"].to_list(), dtype=np.float32), 1.0, 5.0),
        protocols=protocols,
        default_protocol=trials.name,
        attrs={"source": "MSP-IMPROV (UT Dallas MSP lab)", "licence": "MSP-IMPROV academic licence"},
    )


CORPORA.register(
    CorpusCard(
        "msp-improv",
        load_msp_improv,
        modalities="audio, video",
        labels=(
            "categorical votes (av raters), consensus, arousal/valence/dominance/naturalness 1-5, scenario"
        ),
        layout="Evaluation.txt, Audio/**/MSP-IMPROV-*.wav, Video/**/*.avi",
    )
)
