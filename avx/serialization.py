"""Artefacts other people hand us are data, never code: the one place that reads and writes them.

Run folders, checkpoints, stores and corpus releases travel between labs. Everything avx
writes is JSON (configs) or safetensors (tensors); what must stay a torch file (optimiser
state for ``--resume``) is read with ``weights_only=True``. Three helpers cover the rest:

- :func:`to_dict` / :func:`from_dict`: any config dataclass to JSON and back, re-typed
  from its annotations (tuples stay tuples, nested configs are rebuilt), so no hand-kept
  list of "fields that were tuples" can go stale;
- :func:`atomic_write`: temporary file, fsync, rename, so a SIGKILL mid-write leaves the
  previous file intact;
- :class:`RestrictedUnpickler`: for corpus releases that only exist as pickles, admits
  numpy arrays, dicts, lists, strings and numbers and nothing that can run code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import numpy as np

from avx.errors import AvxError

T = TypeVar("T")

# -- config dataclasses <-> JSON ---------------------------------------------------------


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists, nested configs dicts)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict takes a dataclass instance, not {type(obj).__name__}")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_dict(v)
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def from_dict(cls: type[T], d: Mapping[str, Any], *, strict: bool = True) -> T:
    """Rebuild dataclass ``cls`` from :func:`to_dict`'s output, typed by its annotations.

    ``strict``: unknown keys are an error (a config written by a newer avx, or a typo);
    otherwise they are ignored. Missing keys take the field's default.
    """
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if strict and (unknown := set(d) - names):
        raise AvxError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kw = {k: _typed(hints[k], v, f"{cls.__name__}.{k}") for k, v in d.items() if k in names}
    return cls(**kw)


def _typed(tp: Any, v: Any, where: str) -> Any:
    """``v`` (parsed JSON) converted to annotation ``tp``."""
    if tp is Any:
        return v
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _typed(a, v, where)
            except (TypeError, ValueError, AvxError) as e:
                errors.append(str(e))
        raise TypeError(f"{where}: {v!r} matches none of {tp} ({'; '.join(errors)})")
    if origin is Literal:
        if v not in args:
            raise ValueError(f"{where}: {v!r} is not one of {args}")
        return v
    if origin is tuple:
        if not isinstance(v, list | tuple):
            raise TypeError(f"{where}: expected a list, got {type(v).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], x, where) for x in v)
        if args and len(args) != len(v):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(v)}")
        return tuple(_typed(a, x, where) for a, x in zip(args or [Any] * len(v), v, strict=True))
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(v, list | tuple):
            raise TypeError(f"{where}: expected a list, got {type(v).__name__}")
        return [_typed(args[0] if args else Any, x, where) for x in v]
    if origin in (dict, typing.Dict, Mapping):  # noqa: UP006
        if not isinstance(v, Mapping):
            raise TypeError(f"{where}: expected a mapping, got {type(v).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _typed(vt, x, where) for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, Mapping):
            raise TypeError(f"{where}: expected a mapping for {tp.__name__}")
        return from_dict(tp, v)
    if tp is bool:
        if not isinstance(v, bool):
            raise TypeError(f"{where}: expected a bool, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{where}: expected an int, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise TypeError(f"{where}: expected a string, got {v!r}")
        return v
    if tp is type(None):
        if v is not None:
            raise TypeError(f"{where}: expected null, got {v!r}")
        return None
    return v


def with_options(config: T, options: Mapping[str, Any], where: str) -> T:
    """``config`` (a frozen config dataclass) with ``options`` applied, typed by its annotations.

    Values may be typed already or be command-line text (``--opt hop=0.1``): text is
    parsed by the field's annotation (``true``/``false`` for bools, ``none`` for an
    optional field, commas for tuples), so ``--opt`` and a recorded config give the
    same object. An unknown key is an error naming ``where`` and the valid keys.
    """
    hints = get_type_hints(type(config))
    valid = [f.name for f in dataclasses.fields(config)]  # type: ignore[arg-type]
    if unknown := set(options) - set(valid):
        raise AvxError(f"{where}: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    changes = {}
    for k, v in options.items():
        read = _from_text if isinstance(v, str) else _typed
        try:
            changes[k] = read(hints[k], v, f"{where}: option {k}")
        except (TypeError, ValueError) as e:
            raise AvxError(str(e)) from None
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _from_text(tp: Any, text: str, where: str) -> Any:
    """Command-line text converted to annotation ``tp``."""
    origin, args = get_origin(tp), get_args(tp)
    t = text.strip()
    if origin in (Union, types.UnionType):
        if t.lower() in ("none", "null") and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _from_text(a, t, where)
            except (TypeError, ValueError, AvxError):
                continue
        raise ValueError(f"{where}: cannot read {text!r} as {tp}")
    if origin is tuple or origin in (list, typing.List):  # noqa: UP006
        items = [x.strip() for x in t.strip("[]()").split(",") if x.strip()]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(items):
                raise ValueError(f"{where}: expected {len(args)} comma-separated values, got {text!r}")
            return tuple(_from_text(a, x, where) for a, x in zip(args, items, strict=True))
        parsed = [_from_text(args[0] if args else str, x, where) for x in items]
        return tuple(parsed) if origin is tuple else parsed
    if tp is bool:
        if t.lower() in _TRUE | _FALSE:
            return t.lower() in _TRUE
        raise ValueError(f"{where}: expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(t)
        except ValueError:
            raise ValueError(f"{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(t)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if tp is str or origin is Literal:
        return _typed(tp, t, where)
    try:
        return _typed(tp, json.loads(t), where)
    except json.JSONDecodeError:
        return _typed(tp, t, where)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2).encode())


# -- atomic files ------------------------------------------------------------------------


def atomic_write(path: str | Path, data: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that a reader (or a crash) sees the old file or the new one, never half.

    ``data`` is the bytes, or a function writing to the open binary file. The temporary
    file lives in the same folder (rename is atomic only within a file system), is
    fsynced before the rename, and the folder is fsynced after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync(fd: int) -> None:
    """``os.fsync`` (one name, so crash tests can interrupt a write exactly here)."""
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- tensors -----------------------------------------------------------------------------


def save_tensors(
    path: str | Path, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write torch tensors to a safetensors file (contiguous, shared storage split)."""
    from safetensors.torch import save

    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, save(flat, metadata=metadata))


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """A safetensors file's tensors; a damaged file is a one-line error naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as e:
        raise AvxError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from None


def unsupported_global(e: BaseException) -> str | None:
    """The Python object a ``weights_only`` load refused (``torch.nn.modules.linear.Linear``),
    or None when the file was simply not a torch file."""
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(e))
    return m.group(1) if m else None


def torch_load_weights_only(path: str | Path, device: str = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers, never code."""
    import torch

    try:
        return torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        what = unsupported_global(e)
        if what:
            raise AvxError(f"{path}: refused, pickles a Python object ({what}), not only tensors") from None
        raise AvxError(f"{path}: unreadable (not a torch file)") from None
    except Exception as e:
        raise AvxError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


# -- restricted unpickling ---------------------------------------------------------------

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes written by Python 2
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, tuples, strings, bytes and numbers only.

    Any other global (``os.system``, ``builtins.eval``, a class of some package) is
    refused with :class:`pickle.UnpicklingError` naming it, before it is looked up, so
    a crafted file cannot run code. Corpus releases (CMU-MOSEI, M3ED) need nothing more.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused global {module}.{name} (only arrays and plain data are allowed)"
        )


def restricted_load(f: IO[bytes], **kw: Any) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(f, **kw).load()


def restricted_loads(data: bytes, **kw: Any) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kw).load()
