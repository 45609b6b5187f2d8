"""M3ED (Zhao et al., ACL 2022): Chinese TV-series dialogues, 7 emotions, multi-label.

Layout of the release (RUCM3ED)::

    <root>/annotation.json                       labels, speakers, text, times
    <root>/splitInfo/movie_list_{train,val,test}.txt   official partition by series
    <root>/audio/<Speaker>_<utterance>.wav       (optional)
    <root>/*.pkl                                  (optional) released features

``annotation.json`` maps series -> dialogue -> ``{"SpeakerInfo": {A: {Name, Gender,
Age}}, "Dialog": {utterance: {"Speaker", "StartTime", "EndTime", "Text",
"EmoAnnotation": {"final_main_emo", "final_mul_emo", ...}}}}``. The multi-label set is
``final_mul_emo`` (a list, or names separated by ``,``/``;``/``/``); the main emotion
is stored as the categorical label ``main``. Speaker = series + character name, so
speaker trials never split a character.

The released features (CARAT's layout: text 768, visual 1024, audio 342, padded to
60) come as a release pickle (see :mod:`avx.corpora._features`) whose ids are the
utterance ids; without ``annotation.json`` the pickle alone defines samples and
multi-hot labels ``[N, 7]`` in the class order below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._features import flatten_splits, load_feature_pickle, pickle_streams, single_pickle
from avx.corpora._io import fail, media_index, require_dir
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata
from avx.corpora.protocols import official, speaker_trials

CLASS_NAMES = ["happy", "neutral", "sad", "disgust", "anger", "fear", "surprise"]
ALIASES = {"happiness": "happy", "angry": "anger", "sadness": "sad", "surprised": "surprise"}
SPLIT_FILES = {"train": "movie_list_train.txt", "dev": "movie_list_val.txt", "test": "movie_list_test.txt"}


def _emotion(name: str, where: Path, utt: str) -> int:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in CLASS_NAMES:
        raise fail(
            where, f"utterance {utt}: unknown emotion '{name}' (expected one of {', '.join(CLASS_NAMES)})"
        )
    return CLASS_NAMES.index(key)


def _emotions(value: object, where: Path, utt: str) -> list[int]:
    names = value if isinstance(value, list) else re.split(r"[,;/]", str(value or ""))
    return sorted({_emotion(n, where, utt) for n in names if str(n).strip()})


def _seconds(value: object) -> float:
    """Seconds from a number, ``HH:MM:SS(.fff)`` or ``HH:MM:SS:mmm``; NaN when absent."""
    if value is None or value == "":
        return float("nan")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    parts = str(value).strip().split(":")
    try:
        nums = [float(x) for x in parts]
    except ValueError:
        return float("nan")
    if len(nums) == 4:  # hours, minutes, seconds, milliseconds
        return nums[0] * 3600 + nums[1] * 60 + nums[2] + nums[3] / 1000
    if len(nums) in (2, 3):
        return sum(x * 60**i for i, x in enumerate(reversed(nums)))
    return float("nan")


def _movie_splits(root: Path) -> dict[str, str] | None:
    d = root / "splitInfo"
    if not d.is_dir():
        return None
    out: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        path = d / name
        if not path.exists():
            raise fail(path, "missing (official M3ED partition)")
        for movie in filter(None, (x.strip() for x in path.read_text(encoding="utf-8").splitlines())):
            if movie in out:
                raise fail(path, f"series '{movie}' is also in the {out[movie]} list")
            out[movie] = split
    return out


def _from_annotation(root: Path, path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise fail(path, f"malformed JSON ({e})") from None
    audio = media_index(root, ["audio/*.wav", "audio/**/*.wav"])
    rows, multi, main = [], [], []
    for movie, dialogues in data.items():
        for dialogue, d in dialogues.items():
            if "Dialog" not in d:
                raise fail(path, f"dialogue {movie}/{dialogue} has no Dialog")
            info = d.get("SpeakerInfo", {})
            for utt, u in d["Dialog"].items():
                emo = u.get("EmoAnnotation", {})
                labels = _emotions(emo.get("final_mul_emo", emo.get("final_main_emo")), path, utt)
                if not labels:
                    raise fail(path, f"utterance {utt}: no emotion label")
                who = str(u.get("Speaker", ""))
                character = info.get(who, {}).get("Name") or f"{dialogue}:{who}"
                start, end = _seconds(u.get("StartTime")), _seconds(u.get("EndTime"))
                rows.append(
                    {
                        "id": utt,
                        "speaker": f"{movie}:{character}",
                        "duration": end - start,
                        "audio_path": audio.get(f"{who}_{utt}", ""),
                        "video_path": "",
                        "transcript": str(u.get("Text", "")),
                        "series": movie,
                        "dialogue": dialogue,
                        "gender": str(info.get(who, {}).get("Gender", "")),
                        "age": str(info.get(who, {}).get("Age", "")),
                    }
                )
                m = np.zeros(len(CLASS_NAMES), np.float32)
                m[labels] = 1
                multi.append(m)
                main_name = emo.get("final_main_emo")
                main.append(_emotion(main_name, path, utt) if main_name else -1)
    df = pd.DataFrame(rows)
    if df["id"].duplicated().any():
        raise fail(path, f"duplicate utterance '{df['id'][df['id'].duplicated()].iloc[0]}'")
    return df, np.stack(multi), np.asarray(main, dtype=np.int16)


def load_m3ed(root: Path) -> CorpusMetadata:
    root = require_dir(root)
    pickle = single_pickle(root)
    splits = load_feature_pickle(pickle) if pickle else None
    categorical: dict[str, np.ndarray] = {}
    if (root / "annotation.json").exists():
        samples, multi, main = _from_annotation(root, root / "annotation.json")
        categorical["main"] = main
        movies = _movie_splits(root)
        protocols = {}
        if movies is not None:
            p = official([movies.get(m, "") for m in samples["series"]], source="splitInfo/movie_list_*.txt")
            protocols[p.name] = p
    elif pickle is not None and splits is not None:
        samples, split_of, labels = flatten_splits(pickle, splits)
        if labels.shape[1] != len(CLASS_NAMES) or not np.isin(labels, [0, 1]).all():
            raise fail(pickle, f"labels must be 0/1 multi-hot [N, {len(CLASS_NAMES)}]")
        multi = labels.astype(np.float32)
        protocols = {"official": official(split_of, source=f"{pickle.name} train/valid/test")}
    else:
        raise fail(root, "no annotation.json and no release pickle (*.pkl)")
    trials = speaker_trials(samples["speaker"].tolist(), k=5, seed=0)
    protocols[trials.name] = trials
    features = []
    if pickle is not None and splits is not None:
        rows = {x: i for i, x in enumerate(samples["id"])}
        unknown = [x for s in splits.values() for x in s.ids if x not in rows]
        if unknown:
            raise fail(pickle, f"feature id '{unknown[0]}' is not an utterance of annotation.json")
        features = pickle_streams(pickle, splits, rows)
    return CorpusMetadata(
        name="m3ed",
        samples=samples,
        class_names=CLASS_NAMES,
        multilabel=multi,
        categorical=categorical,
        protocols=protocols,
        default_protocol=next(iter(protocols)),
        features=features,
        attrs={"source": "M3ED (AIM3-RUC/RUCM3ED)", "licence": "M3ED research licence"},
    )


CORPORA.register(
    CorpusCard(
        "m3ed",
        load_m3ed,
        modalities="audio, text; released features (text 768, visual 1024, audio 342)",
        labels="multi-label over 7 emotions, main emotion",
        layout="annotation.json, splitInfo/movie_list_*.txt, audio/*.wav, optional *.pkl features",
    )
)
