"""Thin helpers over zarr-python 3: opening any URL, codecs, tables of columns.

Local paths are opened with :class:`zarr.storage.LocalStore`, which writes every chunk
and metadata document atomically (temporary file + rename): avx's commit protocol
relies on that. Other URLs go through fsspec and are read-only for avx.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from avx.errors import StoreError

warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
warnings.filterwarnings("ignore", message=r"Object at \.locks is not recognized")


def compressors(level: int = 3) -> list[Any]:
    """zstd, then a crc32c checksum so a truncated or damaged chunk fails loudly on read."""
    return [ZstdCodec(level=level), Crc32cCodec()]


def is_local(url: str | os.PathLike[str]) -> bool:
    s = str(url)
    return "://" not in s or s.startswith("file://")


def local_path(url: str | os.PathLike[str]) -> Path:
    """The folder of a local store (a path or ``file://`` URL); any other URL is refused.

    Writers go through here, so ``--store s3://bucket/x.zarr`` is a one-line error rather
    than a local folder named ``s3:``.
    """
    s = str(url)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    if "://" in s or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:/", s):
        raise StoreError(
            f"{s}: avx writes stores on local or network file systems only; extract to a local"
            " path, then copy the finished folder there (docs/store.md)"
        )
    return Path(s)


def is_local_group(group: zarr.Group) -> bool:
    return isinstance(group.store_path.store, zarr.storage.LocalStore)


def local_path_of(group: zarr.Group) -> Path:
    """The folder of a group's (local) store root: avx writes local stores only."""
    store = group.store_path.store
    if not isinstance(store, zarr.storage.LocalStore):
        raise StoreError(f"{store}: avx writes stores on local or network file systems only")
    return Path(store.root)


def open_root(url: str | os.PathLike[str], *, writable: bool = False) -> zarr.Group:
    """Open the root group of a store at a local path or fsspec URL.

    Local stores are opened without consolidated metadata (always current); remote
    stores use it, because HTTP cannot list directories. Only Zarr v3 metadata is ever
    parsed: avx writes v3, and a crafted v2 store (whose object arrays may name a pickle
    codec) is refused before any of its arrays is looked at.
    """
    if is_local(url):
        path = local_path(url)
        if not path.exists():
            raise StoreError(f"{path}: no such store (the path does not exist)")
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not an avx store (no zarr.json)")
        store = zarr.storage.LocalStore(path, read_only=not writable)
        return zarr.open_group(store, mode="r+" if writable else "r", use_consolidated=False, zarr_format=3)
    if writable:
        raise StoreError(f"{url}: avx writes stores on local or network file systems only")
    try:
        store = zarr.storage.FsspecStore.from_url(str(url), read_only=True)
        return zarr.open_group(store, mode="r", use_consolidated=True, zarr_format=3)
    except ImportError as e:
        scheme = str(url).split("://", 1)[0]
        need = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs"}.get(scheme, f"fsspec's {scheme} backend")
        raise StoreError(
            f"{url}: reading {scheme}:// stores needs {need} (pip install 'avx[remote]'); {e}"
        ) from None
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise StoreError(f"{url}: cannot open store ({type(e).__name__}: {e})") from None


def missing_chunks(arr: zarr.Array, start: int = 0, stop: int | None = None) -> list[int]:
    """Indices of the chunks (along axis 0) covering rows ``start:stop`` that do not exist.

    Zarr reads an absent chunk as its fill value, so without this check a lost chunk
    would come back as zeros. avx writes every chunk (``write_empty_chunks``), so an
    absent one is always damage.
    """
    stop = arr.shape[0] if stop is None else stop
    if arr.ndim == 0 or stop <= start:
        return []
    step = arr.chunks[0]
    store, base = arr.store_path.store, arr.path
    rest = (0,) * (arr.ndim - 1)
    keys = {
        i: f"{base}/{arr.metadata.encode_chunk_key((i, *rest))}"
        for i in range(start // step, (stop - 1) // step + 1)
    }
    return [i for i, key in keys.items() if not sync(store.exists(key))]


def child_names(group: zarr.Group) -> list[str]:
    """Names of ``group``'s children without parsing their metadata, so one garbled
    ``zarr.json`` cannot hide its siblings. Local stores list the folder; others (HTTP
    cannot list) use the consolidated metadata."""
    store = group.store_path.store
    if isinstance(store, zarr.storage.LocalStore):
        prefix = group.path

        async def collect() -> list[str]:
            return [n async for n in store.list_dir(prefix)]

        names = sync(collect())
        return sorted(n for n in names if n != "zarr.json" and not n.startswith("."))
    return sorted(k for k, _ in group.members())


def write_array(
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    *,
    chunk_rows: int | None = None,
    attributes: dict[str, Any] | None = None,
) -> zarr.Array:
    """Create ``group/name`` holding ``data``, chunked along axis 0, checksummed."""
    data = np.asarray(data)
    if data.dtype.kind in "OUT":
        data = data.astype(np.dtypes.StringDType())
        dtype: Any = str
    else:
        dtype = data.dtype
    rows = max(1, chunk_rows or data.shape[0] or 1)
    arr = group.create_array(
        name,
        shape=data.shape,
        chunks=(rows, *data.shape[1:]) if data.ndim else (),
        dtype=dtype,
        compressors=compressors(),
        attributes=attributes or {},
        config={"write_empty_chunks": True},
    )
    if data.size:
        arr[...] = data
    return arr


def write_table(group: zarr.Group, df: pd.DataFrame) -> None:
    """Write a DataFrame as one 1-D array per column; the column order goes in attrs.

    Numeric columns keep their dtype (integers with missing values become float with
    NaN); everything else is stored as UTF-8 strings with missing values as ``""``.
    """
    columns = []
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_bool_dtype(s):
            values = s.to_numpy(dtype=bool)
        elif pd.api.types.is_numeric_dtype(s):
            values = s.to_numpy(dtype=float if s.isna().any() else s.dtype)
        else:
            values = np.array(["" if pd.isna(v) else str(v) for v in s], dtype=object)
        write_array(group, str(col), values)
        columns.append(str(col))
    group.attrs["columns"] = columns
    group.attrs["n_rows"] = len(df)


def read_table(group: zarr.Group) -> pd.DataFrame:
    columns = group.attrs["columns"]
    data = {}
    for col in columns:
        values = group[col][...]
        if values.dtype.kind == "T":
            values = values.astype(object)
        data[col] = values
    return pd.DataFrame(data, columns=columns)
