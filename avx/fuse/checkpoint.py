"""The resumable training checkpoint, written so that no crash can cost more than one epoch.

``RUN/checkpoint/`` holds, for the last two finished epochs N:

- ``epoch-N.safetensors``: the current weights (``model.*``) and the best weights so far
  (``best.*``);
- ``epoch-N.pt``: optimiser, schedule, AMP scaler, RNG states, history and the best
  score, plain tensors and containers read back with ``weights_only=True``;
- ``latest.json``: ``{"epoch": N, ...}``, replaced atomically *after* both files are on
  disk.

A SIGKILL at any instant leaves ``latest.json`` naming a complete pair (the new one or
the previous one); older pairs are deleted only after ``latest.json`` moved on. The pair
before the latest is kept as well: if the latest is unreadable anyway (a disk or network
file system that tore it), loading says so in one line and falls back to it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from avx.errors import AvxError
from avx.fuse.run_files import CHECKPOINT_FOLDER
from avx.serialization import atomic_write, load_tensors, save_tensors, torch_load_weights_only

FOLDER = CHECKPOINT_FOLDER
LEGACY = "last.pt"


def save_checkpoint(
    run: Path,
    epoch: int,
    model: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    """Write epoch ``epoch``'s checkpoint into ``run/checkpoint/`` (see the module docs)."""
    folder = run / FOLDER
    stem = f"epoch-{epoch:04d}"
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
    save_tensors(folder / f"{stem}.safetensors", tensors, metadata={"epoch": str(epoch)})
    atomic_write(folder / f"{stem}.pt", lambda f: torch.save({**state, "epoch": epoch}, f))
    pointer = {
        "epoch": epoch,
        "weights": f"{stem}.safetensors",
        "state": f"{stem}.pt",
        "has_best": best is not None,
    }
    atomic_write(folder / "latest.json", json.dumps(pointer).encode())
    previous = [e for e in _epochs(folder) if e < epoch][-1:]
    keep = {stem, *(f"epoch-{e:04d}" for e in previous)}
    for old in [*folder.glob("epoch-*"), *folder.glob(".epoch-*.tmp")]:  # tmp: left by a killed write
        if old.name.split(".")[0] not in keep:
            old.unlink(missing_ok=True)


def _epochs(folder: Path) -> list[int]:
    """Epochs with both files on disk, oldest first."""
    out = []
    for f in folder.glob("epoch-*.safetensors"):
        stem = f.name.removesuffix(".safetensors")
        if (folder / f"{stem}.pt").exists() and stem.removeprefix("epoch-").isdigit():
            out.append(int(stem.removeprefix("epoch-")))
    return sorted(out)


def load_checkpoint(
    run: Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]] | None:
    """``(model weights, best weights, trainer state)`` of the last complete epoch, or None.

    A run holding only the pickled ``last.pt`` of an older avx is refused with the
    command that converts it: unpickling a folder someone sent can run their code.
    """
    pointer = run / FOLDER / "latest.json"
    if not pointer.exists():
        if (run / LEGACY).exists():
            raise AvxError(
                f"{run / LEGACY}: pickled checkpoint of an older avx (loading it can run code);"
                f" if you trust its source, convert the run once with `avx fuse convert {run}`"
            )
        return None
    folder = run / FOLDER
    try:
        latest = int(json.loads(pointer.read_text())["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        warnings.warn(
            f"{pointer}: unreadable ({type(e).__name__}); using the newest complete epoch", stacklevel=2
        )
        latest = max(_epochs(folder), default=-1)
    candidates = [latest, *(e for e in reversed(_epochs(folder)) if e < latest)]
    reasons = []
    for i, epoch in enumerate(candidates):
        try:
            return _load_pair(folder, epoch, device)
        except Exception as e:
            reasons.append(str(e) if isinstance(e, AvxError) else f"{type(e).__name__}: {_first_line(e)}")
            if i + 1 < len(candidates):
                warnings.warn(
                    f"{folder}/epoch-{epoch:04d}: unreadable checkpoint ({reasons[-1]}); falling back to"
                    f" epoch {candidates[i + 1]}",
                    stacklevel=2,
                )
    raise AvxError(f"{folder}: no readable checkpoint ({'; '.join(reasons) or 'none written'})")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:160]


def _load_pair(
    folder: Path, epoch: int, device: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    stem = f"epoch-{epoch:04d}"
    tensors = load_tensors(folder / f"{stem}.safetensors", device)
    state = torch_load_weights_only(folder / f"{stem}.pt", device)
    if state.get("epoch") != epoch:
        raise AvxError(f"{folder / stem}.pt holds epoch {state.get('epoch')}, not {epoch}")
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    best = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    return model, (best or None), state
