"""Resolving ``--weights SPEC`` into a checkpoint and its provenance.

SPEC is ``none`` (random init: allowed for tests and demos, recorded as
``random-init`` and warned about), a local file (``.pt``/``.pth``/``.bin``/
``.safetensors``), a local ``save_pretrained`` folder, a Hugging Face hub id
(``org/name``; needs network on first use, then the local HF cache), or a
backbone-specific named source such as ``imagenet``. The sha256 of every file that is
loaded goes into the stream's provenance.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from avx.errors import AvxError

RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class WeightsSource:
    spec: str
    kind: Literal["random-init", "file", "folder", "hub", "named"]
    path: Path | None = None

    def provenance(self, sha256: str | None = None) -> dict[str, Any]:
        if self.kind == "random-init":
            return {"weights": RANDOM_INIT, "weights_sha256": RANDOM_INIT}
        return {"weights": self.spec, "weights_kind": self.kind, "weights_sha256": sha256}


def resolve_weights(spec: str | None, *, default: str, backbone: str) -> WeightsSource:
    spec = default if spec is None else spec
    if spec.lower() in {"none", "random", RANDOM_INIT}:
        warnings.warn(
            f"{backbone}: using RANDOM-INIT weights (--weights none); features are for pipeline"
            " tests only, and the store records them as random-init",
            stacklevel=2,
        )
        return WeightsSource(spec, "random-init")
    p = Path(spec).expanduser()
    if p.is_file():
        return WeightsSource(spec, "file", p)
    if p.is_dir():
        return WeightsSource(spec, "folder", p)
    if spec.startswith((".", "/", "~")) or spec.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise AvxError(f"{spec}: weights file not found")
    if "/" in spec:
        return WeightsSource(spec, "hub")
    return WeightsSource(spec, "named")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict: unwraps ``{'state_dict': ...}``/``{'model': ...}`` and
    strips DataParallel's ``module.`` prefix, the layouts published emotion checkpoints use."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise AvxError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise AvxError(f"{path}: checkpoint holds {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}
