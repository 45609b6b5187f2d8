"""Evaluation protocols: which samples train, select and test in each fold.

A protocol is stored in the store (``protocols/<name>``), so two labs using one store
compare like with like. It is an ``[n_samples, n_folds]`` int8 array of split codes
(0 train, 1 dev, 2 test, -1 unused) plus, per fold, the speakers each split holds.
Every builder here is speaker-disjoint by construction, and
:meth:`Protocol.check_speaker_disjoint` verifies it for protocols that come from a
corpus's own files.

Builders:

- :func:`speaker_trials`: K seeded random partitions of the speakers, 70/15/15 (the
  VAVL and two-stage CREMA-D protocol: 91 actors -> 63/14/14 speakers);
- :func:`speaker_folds`: rotated blocks of speakers (RAVDESS: 4 test / 4 dev / 16 train);
- :func:`leave_one_session_out`: train on the other sessions; the held-out session's two
  speakers take turns as dev and test (COLD's IEMOCAP split is the fold that holds out
  session 5);
- :func:`official`: a corpus's published partition (one fold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from avx.errors import AvxError, UnknownNameError

if TYPE_CHECKING:  # base imports this module
    from avx.corpora.base import CorpusMetadata

SPLITS = ("train", "dev", "test")
UNUSED = -1
OFFICIAL_NAMES = {
    "train": 0,
    "training": 0,
    "dev": 1,
    "devel": 1,
    "development": 1,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "test": 2,
}


@dataclass
class Protocol:
    """Split assignment per fold: ``assign[i, k]`` is sample i's split code in fold k."""

    name: str
    description: str
    assign: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_folds(self) -> int:
        return int(self.assign.shape[1])

    def fold(self, k: int = 0) -> np.ndarray:
        """Split names (``train``/``dev``/``test``, "" = unused) of fold ``k``."""
        if not 0 <= k < self.n_folds:
            raise AvxError(f"protocol '{self.name}' has folds 0..{self.n_folds - 1}, not {k}")
        names = np.array(["", *SPLITS], dtype=object)
        return names[self.assign[:, k].astype(np.int64) + 1]

    def speakers(self, speakers: Sequence[str]) -> list[dict[str, list[str]]]:
        """Per fold, the sorted speakers each split holds (recorded in the store)."""
        spk = np.asarray(speakers, dtype=object)
        out = []
        for k in range(self.n_folds):
            out.append({s: sorted(set(spk[self.assign[:, k] == c].tolist())) for c, s in enumerate(SPLITS)})
        return out

    def check_speaker_disjoint(self, speakers: Sequence[str]) -> None:
        for k, fold in enumerate(self.speakers(speakers)):
            for i, a in enumerate(SPLITS):
                for b in SPLITS[i + 1 :]:
                    if common := set(fold[a]) & set(fold[b]):
                        raise AvxError(
                            f"protocol '{self.name}' fold {k}: speaker {sorted(common)[0]}"
                            f" is in both {a} and {b}"
                        )


def _assign_by_speaker(speakers: np.ndarray, folds: list[dict[str, int]]) -> np.ndarray:
    out = np.full((len(speakers), len(folds)), UNUSED, dtype=np.int8)
    for k, mapping in enumerate(folds):
        out[:, k] = [mapping.get(s, UNUSED) for s in speakers]
    return out


def speaker_trials(
    speakers: Sequence[str],
    *,
    k: int = 5,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    name: str = "speaker-trials",
) -> Protocol:
    """K seeded speaker-disjoint random partitions (dev and test get ``round(f * S)``
    speakers each, train the rest: 91 CREMA-D actors -> 63/14/14, as in VAVL)."""
    spk = np.asarray(speakers, dtype=object)
    unique = sorted(set(spk.tolist()))
    if len(unique) < 3:
        raise AvxError(f"protocol {name}: needs at least 3 speakers, the corpus has {len(unique)}")
    n_dev = max(1, round(fractions[1] * len(unique)))
    n_test = max(1, round(fractions[2] * len(unique)))
    folds = []
    for trial in range(k):
        order = np.random.default_rng([seed, trial]).permutation(len(unique))
        codes = {}
        for rank, i in enumerate(order):
            codes[unique[i]] = 2 if rank < n_test else 1 if rank < n_test + n_dev else 0
        folds.append(codes)
    return Protocol(
        name,
        f"{k} seeded speaker-disjoint random partitions, {len(unique) - n_dev - n_test}/{n_dev}/{n_test}"
        f" speakers train/dev/test (seed {seed})",
        _assign_by_speaker(spk, folds),
        {"k": k, "seed": seed, "fractions": list(fractions)},
    )


def speaker_folds(
    speakers: Sequence[str],
    *,
    block: int,
    n_folds: int,
    order: Sequence[str] | None = None,
    name: str = "speaker-folds",
) -> Protocol:
    """Rotated speaker blocks: fold k tests block k, selects on block k+1, trains on the rest.

    ``order`` fixes the speaker order (sorted ids by default; SFAV's released code
    used directory-listing order, a bug its authors fixed later).
    """
    spk = np.asarray(speakers, dtype=object)
    unique = list(order) if order is not None else sorted(set(spk.tolist()))
    n_blocks = len(unique) // block
    if n_blocks < 3 or not 1 <= n_folds <= n_blocks:
        raise AvxError(f"protocol {name}: {len(unique)} speakers cannot make {n_folds} folds of {block}")
    blocks = [unique[b * block : (b + 1) * block] for b in range(n_blocks)]
    folds = []
    for f in range(n_folds):
        codes = {s: 0 for s in unique}
        codes.update({s: 2 for s in blocks[f]})
        codes.update({s: 1 for s in blocks[(f + 1) % n_blocks]})
        folds.append(codes)
    return Protocol(
        name,
        f"{n_folds} rotated folds: {block} speakers test, {block} dev, {len(unique) - 2 * block} train",
        _assign_by_speaker(spk, folds),
        {"block": block, "n_folds": n_folds, "order": unique},
    )


def leave_one_session_out(
    sessions: Sequence[str], speakers: Sequence[str], *, name: str = "leave-one-session-out"
) -> Protocol:
    """Two folds per session: train on all other sessions; of the held-out session's
    speakers, one is dev and the other test, then the roles swap."""
    ses = np.asarray(sessions, dtype=object)
    spk = np.asarray(speakers, dtype=object)
    folds, order = [], []
    for s in sorted(set(ses.tolist())):
        held = sorted(set(spk[ses == s].tolist()))
        if len(held) != 2:
            raise AvxError(f"protocol {name}: session {s} has {len(held)} speakers, expected 2")
        for dev, test in (held, held[::-1]):
            codes = {x: 0 for x in set(spk[ses != s].tolist())}
            codes.update({dev: 1, test: 2})
            folds.append(codes)
            order.append({"session": s, "dev": dev, "test": test})
    return Protocol(
        name,
        f"{len(folds)} folds: one session held out, its speakers alternate as dev and test",
        _assign_by_speaker(spk, folds),
        {"folds": order},
    )


def official(split_names: Sequence[str], *, source: str, name: str = "official") -> Protocol:
    """The corpus's published partition (names such as train/valid/devel/test)."""
    codes = np.array([OFFICIAL_NAMES.get(str(s).strip().lower(), UNUSED) for s in split_names])
    return Protocol(
        name,
        f"official partition ({source})",
        codes.astype(np.int8).reshape(-1, 1),
        {"source": source},
    )


def parse_protocol_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``speaker-trials:k=10,seed=3`` -> (``speaker-trials``, ``{"k": 10, "seed": 3}``)."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise AvxError(f"protocol option '{item}' is not key=value")
        try:
            params[key.strip()] = int(value)
        except ValueError:
            raise AvxError(f"protocol option '{key}' must be an integer, got '{value}'") from None
    return name.strip(), params


def apply_protocol(meta: CorpusMetadata, spec: str) -> str:
    """Make ``spec`` the protocol a store defaults to; returns its name.

    Corpus-provided protocols are used as they are. ``speaker-trials`` works for every
    corpus and takes options (``speaker-trials:k=10,seed=1``); the trials built with
    them replace the corpus's default trials, and the options are recorded.
    """
    name, params = parse_protocol_spec(spec)
    if name == "speaker-trials" and (params or name not in meta.protocols):
        unknown = set(params) - {"k", "seed"}
        if unknown:
            raise AvxError(f"protocol speaker-trials takes k and seed, not {', '.join(sorted(unknown))}")
        meta.protocols[name] = speaker_trials(meta.samples["speaker"].astype(str).tolist(), **params)
    elif params:
        raise AvxError(f"protocol '{name}' takes no options")
    if name not in meta.protocols:
        raise UnknownNameError("protocol", name, sorted({*meta.protocols, "speaker-trials"}))
    meta.default_protocol = name
    return name
