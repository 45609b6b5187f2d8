"""Any lab's own corpus, described by one CSV or Parquet manifest.

``--root`` is the manifest file, or a directory holding ``manifest.csv`` /
``manifest.parquet``. Media paths are relative to the manifest's directory (or
absolute). Columns:

==================  ==========================================================
``id``              unique sample id (required)
``speaker``         speaker id (required: every protocol is speaker-disjoint)
``audio_path``      audio file (at least one of the two media columns)
``video_path``      video file
``transcript``      text (optional)
``duration``        seconds (optional)
``split``           train/dev/test (optional): stored as the ``official`` protocol
``label``           categorical label by class name (optional)
``labels``          multi-label: class names separated by ``;`` (optional)
``dim:<name>``      dimensional label; ``dim:valence[1,5]`` states its scale, else
                    the observed min/max is recorded as the scale (optional)
anything else       kept as a sample attribute (usable as a fairness group)
==================  ==========================================================

Classes are the sorted union of the names in ``label`` and ``labels``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._io import check_unique, fail, sha256_file
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata, Dimensions
from avx.corpora.protocols import official, speaker_trials

RESERVED = ("id", "speaker", "audio_path", "video_path", "transcript", "duration", "split", "label", "labels")
DIM = re.compile(r"^dim:(?P<name>[\w-]+)(?:\[(?P<low>[-\d.]+),(?P<high>[-\d.]+)\])?$")


def _read(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"id": str, "speaker": str}, keep_default_na=False, na_values=[""])
    except Exception as e:
        raise fail(path, f"unreadable manifest ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _manifest_path(root: Path) -> Path:
    if root.is_file():
        return root
    for name in ("manifest.csv", "manifest.parquet"):
        if (root / name).exists():
            return root / name
    raise fail(root, "no manifest (pass the CSV/Parquet file, or a directory with manifest.csv|parquet)")


def load_manifest(root: Path) -> CorpusMetadata:
    path = _manifest_path(Path(root))
    base = path.parent
    df = _read(path)
    df.columns = [str(c).strip() for c in df.columns]
    for col in ("id", "speaker"):
        if col not in df:
            raise fail(path, f"lacks the required column '{col}'")
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            raise fail(path, f"empty {col}", int(np.flatnonzero(empty.to_numpy())[0]) + 1)
    if "audio_path" not in df and "video_path" not in df:
        raise fail(path, "lacks both audio_path and video_path")
    df["id"], df["speaker"] = df["id"].astype(str), df["speaker"].astype(str)
    check_unique(path, df["id"].tolist())
    samples = pd.DataFrame({"id": df["id"], "speaker": df["speaker"]})
    samples["duration"] = pd.to_numeric(df["duration"], errors="coerce") if "duration" in df else np.nan
    for col in ("audio_path", "video_path"):
        listed = df[col].fillna("").astype(str) if col in df else pd.Series([""] * len(df))
        # kept as listed (relative to the manifest, or absolute); "" when the file is absent
        samples[col] = [Path(rel).as_posix() if rel and (base / rel).exists() else "" for rel in listed]
        samples[f"{col.split('_')[0]}_listed"] = listed.to_numpy() != ""
    if "transcript" in df:
        samples["transcript"] = df["transcript"].fillna("").astype(str)

    names: set[str] = set()
    if "label" in df:
        names |= {str(x).strip() for x in df["label"].dropna() if str(x).strip()}
    if "labels" in df:
        names |= {n.strip() for x in df["labels"].dropna() for n in str(x).split(";") if n.strip()}
    classes = sorted(names)
    index = {c: i for i, c in enumerate(classes)}
    categorical = {}
    if "label" in df:
        categorical["label"] = np.array(
            [index[str(x).strip()] if pd.notna(x) and str(x).strip() else -1 for x in df["label"]],
            dtype=np.int16,
        )
    multilabel = None
    if "labels" in df:
        multilabel = np.zeros((len(df), len(classes)), np.float32)
        for i, x in enumerate(df["labels"]):
            for n in str(x).split(";") if pd.notna(x) else []:
                if n.strip():
                    multilabel[i, index[n.strip()]] = 1.0

    dims, dim_names, low, high = [], [], [], []
    for col in df.columns:
        if col.startswith("dim:"):
            m = DIM.match(col)
            if not m:
                raise fail(path, f"column '{col}' is not dim:<name> or dim:<name>[low,high]")
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float32)
            bad = np.flatnonzero(df[col].notna().to_numpy() & np.isnan(v))
            if bad.size:
                raise fail(path, f"{col} is not a number ({df[col].iloc[bad[0]]!r})", int(bad[0]) + 1)
            lo = float(m["low"]) if m["low"] else float(np.nanmin(v))
            hi = float(m["high"]) if m["high"] else float(np.nanmax(v))
            out = np.flatnonzero(~np.isnan(v) & ((v < lo) | (v > hi)))
            if out.size:
                raise fail(path, f"{col} value {v[out[0]]:g} outside [{lo:g}, {hi:g}]", int(out[0]) + 1)
            dims.append(v)
            dim_names.append(m["name"])
            low.append(lo)
            high.append(hi)
    dimensions = None
    if dims:
        if len(set(low)) > 1 or len(set(high)) > 1:
            raise fail(path, "dimensional columns must share one scale (state it as dim:<name>[low,high])")
        dimensions = Dimensions(dim_names, np.stack(dims, axis=1), low[0], high[0])

    for col in df.columns:
        if col not in RESERVED and not col.startswith("dim:"):
            samples[col] = df[col].to_numpy()
    protocols = {}
    if "split" in df:
        p = official(df["split"].fillna("").astype(str).tolist(), source=f"{path.name} split column")
        unknown = [s for s, c in zip(df["split"].fillna(""), p.assign[:, 0], strict=True) if c < 0 and s]
        if unknown:
            raise fail(path, f"split '{unknown[0]}' is not train/dev/test (or valid/val/devel)")
        protocols[p.name] = p
    if df["speaker"].nunique() >= 3:
        trials = speaker_trials(df["speaker"].tolist(), k=5, seed=0)
        protocols[trials.name] = trials
    return CorpusMetadata(
        name="manifest",
        samples=samples,
        class_names=classes,
        categorical=categorical,
        multilabel=multilabel,
        dimensions=dimensions,
        protocols=protocols,
        default_protocol=next(iter(protocols), None),
        attrs={"source": f"manifest {path.name}", "manifest_sha256": sha256_file(path)},
    )


CORPORA.register(
    CorpusCard(
        "manifest",
        load_manifest,
        modalities="audio, video, text (as listed)",
        labels="categorical, multi-label and/or dimensional columns; free attributes",
        layout="manifest.csv|parquet: id, speaker, audio_path, video_path"
        "[, transcript, split, label, labels, dim:*]",
    )
)
