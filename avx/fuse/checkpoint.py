"""The resumable training checkpoint, written so that no crash can cost more than one epoch.

``RUN/checkpoint/`` holds, for the last finished epoch N:

- ``epoch-N.safetensors``: the current weights (``model.*``) and the best weights so far
  (``best.*``);
- ``epoch-N.pt``: optimiser, schedule, AMP scaler, RNG states, history and the best
  score, plain tensors and containers read back with ``weights_only=True``;
- ``latest.json``: ``{"epoch": N, ...}``, replaced atomically *after* both files are on
  disk.

A SIGKILL at any instant leaves ``latest.json`` naming a complete pair (the new one or
the previous one); older pairs are deleted only after ``latest.json`` moved on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from avx.errors import AvxError
from avx.serialization import atomic_write, load_tensors, save_tensors, torch_load_weights_only

FOLDER = "checkpoint"
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
    for old in [*folder.glob("epoch-*"), *folder.glob(".epoch-*.tmp")]:  # tmp: left by a killed write
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)


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
    try:
        p = json.loads(pointer.read_text())
    except json.JSONDecodeError as e:
        raise AvxError(f"{pointer}: unreadable ({e})") from None
    tensors = load_tensors(run / FOLDER / p["weights"], device)
    state = torch_load_weights_only(run / FOLDER / p["state"], device)
    if state.get("epoch") != p["epoch"]:
        raise AvxError(f"{pointer}: names epoch {p['epoch']} but its state file holds {state.get('epoch')}")
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    best = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    return model, (best if p.get("has_best") else None), state
