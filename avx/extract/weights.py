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
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from avx.errors import AvxError
from avx.serialization import unsupported_global

RANDOM_INIT = "random-init"


def unavailable(spec: str, backbone: str, what: str, e: Exception) -> AvxError:
    """The one-line error for weights that could not be loaded from a hub id or a named
    download (most often: offline). It says what to pass instead, because a backbone
    given no ``--weights`` downloads its default and a new user may not know that."""
    reason = " ".join(str(e).split())[:160]
    return AvxError(
        f"{spec}: cannot load {what} ({type(e).__name__}: {reason}); weights come from a hub"
        f" when no local ones are given: offline, pass --weights {backbone}=/path/to/a/local"
        " file or save_pretrained folder"
    )


@dataclass(frozen=True)
class WeightsSource:
    spec: str
    kind: Literal["random-init", "file", "folder", "hub", "named"]
    path: Path | None = None

    def provenance(self, sha256: str | None = None, *, unpickled: bool = False) -> dict[str, Any]:
        """What the stream records; ``unpickled``: the file was a pickle loaded under ``--trust-pickle``."""
        if self.kind == "random-init":
            return {"weights": RANDOM_INIT, "weights_sha256": RANDOM_INIT}
        out = {"weights": self.spec, "weights_kind": self.kind, "weights_sha256": sha256}
        if unpickled:
            out["weights_unpickled"] = "trusted by --trust-pickle"
        return out

    def local_folder(self) -> Path | None:
        """Where this source's files are on disk: the folder itself, or a hub id's HF-cache
        snapshot (None when not downloaded, or not a folder-like source)."""
        if self.kind == "folder":
            return self.path
        return hub_snapshot(self.spec) if self.kind == "hub" else None


def resolve_weights(
    spec: str | None, *, default: str | None, backbone: str, expects: str = ""
) -> WeightsSource:
    """Classify ``spec`` (``default`` when None; a None default means --weights is required)."""
    if spec is None and default is None:
        raise AvxError(
            f"{backbone}: no default weights; pass --weights {backbone}=PATH ({expects or 'a checkpoint'})"
            f" or --weights {backbone}=none for random init"
        )
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


def sha256_folder(path: str | Path) -> dict[str, str]:
    """sha256 of every weight file in a ``save_pretrained`` folder (or an HF snapshot)."""
    path = Path(path)
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
    )
    return {str(f.relative_to(path)): sha256_file(f) for f in files}


def hub_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache folder of ``repo_id`` (after a download), for hashing its files."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


class StateDict(dict):
    """A checkpoint's tensors; ``unpickled`` says the file had to be unpickled (trusted)."""

    unpickled: bool = False


def load_state_dict(path: str | Path, *, trust_pickle: bool = False) -> StateDict:
    """A checkpoint's state dict: unwraps ``{'state_dict': ...}``/``{'model': ...}`` and
    strips DataParallel's ``module.`` prefix, the layouts published emotion checkpoints use.

    Files are read with ``weights_only=True`` (tensors and plain containers, no code).
    Checkpoints that pickle a whole ``nn.Module`` (HSEmotion's ``enet_b2_8.pt``) cannot be
    read that way: unpickling runs code from the file, so they are refused with a one-line
    error unless the user passed ``--trust-pickle`` (``trust_pickle=True``); then the
    module is unpickled, its ``state_dict()`` used and the stream's provenance says so.
    """
    path = Path(path)
    unpickled = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                what = unsupported_global(e)
                if what is None:
                    raise
                if not trust_pickle:
                    raise AvxError(
                        f"{path}: pickles Python objects ({what}), not only tensors (loading it can run"
                        " code); if you trust its source, pass --trust-pickle"
                    ) from None
                warnings.warn(f"{path}: pickled model object; unpickling it (--trust-pickle)", stacklevel=2)
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
                unpickled = True
    except AvxError:
        raise
    except Exception as e:
        raise AvxError(
            f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
        elif isinstance(obj, dict) and isinstance(obj.get(key), torch.nn.Module):
            obj = obj[key].state_dict()
    if not isinstance(obj, dict):
        raise AvxError(f"{path}: checkpoint holds {type(obj).__name__}, not a state dict")
    out = StateDict({k.removeprefix("module."): v for k, v in obj.items()})
    out.unpickled = unpickled
    return out


def load_into(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, *, ignore: tuple[str, ...] = ()
) -> None:
    """``load_state_dict(strict=True)`` up to the keys under ``ignore`` (classifier heads of
    any size), with a one-line error naming the file and the first mismatch."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    want = {k for k in own if not k.startswith(ignore)}
    missing, extra = sorted(want - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise AvxError(
            f"{path}: not a checkpoint of this architecture ({what};"
            f" {len(missing)} missing, {len(extra)} unexpected)"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise AvxError(f"{path}: '{k}' has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict({**{k: own[k] for k in own if k.startswith(ignore)}, **state}, strict=True)
