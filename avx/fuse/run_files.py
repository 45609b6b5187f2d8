"""What a run folder holds, and whether it holds a finished run: the names only.

Kept free of torch so that the CLI can answer "this is not a finished run" in well under
a second, before it imports anything heavy.
"""

from __future__ import annotations

from pathlib import Path

from avx.errors import AvxError

CHECKPOINT_FOLDER = "checkpoint"
"""``RUN/checkpoint/``: the resumable state, written every epoch while a run trains."""
LEGACY_MODEL = "model.pt"
"""The pickled model of avx versions before run format 2 (never loaded implicitly)."""
RUN_FILES = (
    "config.json",
    "model.json",
    "model.safetensors",
    "metrics.json",
    CHECKPOINT_FOLDER,
    LEGACY_MODEL,
    "last.pt",
)
"""What marks a folder as holding a run (of this avx or an older one)."""


def trial_runs(path: Path) -> list[tuple[int, Path]]:
    """The runs of a trials directory (``--trials`` folds or ``--seeds`` seeds), as
    ``(key, folder)``: the key (fold or seed) pairs runs of two directories."""
    import json

    s = json.loads((path / "trials.json").read_text())
    folders = s.get("runs") or [f"fold-{k}" for k in s["folds"]]
    return [(k, path / f) for k, f in zip(s["folds"], folders, strict=True)]


def is_finished(out: Path) -> bool:
    """The folder holds a completed run: model and metrics written, checkpoint removed.

    (A run kept with ``keep_checkpoint`` is resumable instead: ``--resume`` reloads its
    last epoch and writes the run again.)"""
    done = (out / "model.safetensors").exists() and (out / "metrics.json").exists()
    return done and not (out / CHECKPOINT_FOLDER).exists()


def check_loadable(path: Path) -> None:
    """Raise the one-line reason why ``path`` holds no run to load, if it holds none.

    ``model.json`` is written last (after the weights), so its presence means a complete
    model; an interrupted run has a checkpoint instead, and ``--resume`` continues it.
    """
    if (path / "model.json").exists():
        return
    if (path / LEGACY_MODEL).exists():
        raise AvxError(
            f"{path / LEGACY_MODEL}: run saved as a pickle by an older avx (loading it can run"
            f" code); if you trust its source, convert it once with `avx fuse convert {path}`"
        )
    if not path.exists():
        raise AvxError(f"{path}: no such run directory")
    what = "config.json" if not (path / "config.json").exists() else "model.json"
    hint = "; `--resume` continues it" if (path / CHECKPOINT_FOLDER).exists() else ""
    raise AvxError(f"{path}: not a finished run directory (no {what}){hint}")
