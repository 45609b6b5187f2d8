"""Reading corpus files with one-line errors that name the file and the row.

A wrong label is worse than a crash: every reader here refuses malformed, truncated or
out-of-range input with :class:`CorpusFileError` rather than guessing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from avx.errors import AvxError


class CorpusFileError(AvxError):
    """A corpus file is missing, malformed, or holds a value outside its documented range."""


def fail(path: Path | str, problem: str, row: int | str | None = None) -> CorpusFileError:
    """The error for ``path``; ``row`` is a 1-based data row (int) or a place ("line 12")."""
    where = f"{path}" if row is None else f"{path}, {row}" if isinstance(row, str) else f"{path}, row {row}"
    return CorpusFileError(f"{where}: {problem}")


def require_dir(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CorpusFileError(f"{root}: corpus root is not a directory")
    return root


def read_csv(
    path: Path,
    what: str,
    *,
    columns: Sequence[str] = (),
    sep: str | None = ",",
    numeric: Sequence[str] = (),
) -> pd.DataFrame:
    """A CSV with ``columns`` present and ``numeric`` columns complete and numeric.

    Row numbers in errors are 1-based data rows (the header is row 0), i.e. the line
    number in the file minus one, which is what a user sees in a spreadsheet.
    """
    if not path.exists():
        raise fail(path, f"missing ({what})")
    try:
        df = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c")
    except Exception as e:  # pandas raises several unrelated types for bad CSV
        raise fail(path, f"malformed CSV ({type(e).__name__}: {' '.join(str(e).split())})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if missing := [c for c in columns if c not in df.columns]:
        raise fail(path, f"lacks column(s) {', '.join(missing)} ({what})")
    require_numeric(path, df, numeric)
    return df


def require_numeric(path: Path, df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Convert ``columns`` to numbers in place; an empty or non-numeric cell names its row."""
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = df[col].iloc[i]
            shown = "empty" if pd.isna(value) else f"not a number ({str(value)!r})"
            raise fail(path, f"column {col} is {shown}; truncated file?", i + 1)
        df[col] = values


def check_unique(path: Path, ids: Iterable[str], what: str = "id") -> None:
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if x in seen:
            raise fail(path, f"duplicate {what} '{x}' (also row {seen[x] + 1})", i + 1)
        seen[x] = i


def check_range(path: Path, values: np.ndarray, low: float, high: float, what: str, rows=None) -> None:
    """Refuse values outside ``[low, high]`` (NaN allowed: unrated)."""
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isnan(v) & ((v < low) | (v > high))
    if bad.any():
        i = np.argwhere(bad)[0]
        row = (rows[i[0]] if rows is not None else i[0] + 1) if v.ndim else None
        raise fail(path, f"{what} {v[tuple(i)]:g} outside the documented range [{low:g}, {high:g}]", row)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def media_index(root: Path, patterns: Sequence[str]) -> dict[str, str]:
    """Stem -> path relative to ``root`` for files matching ``patterns`` (first wins).

    One recursive listing per pattern, never a stat per clip, so partial downloads
    (some files absent) cost nothing extra and show up as empty media paths.
    """
    out: dict[str, str] = {}
    for pattern in patterns:
        for p in sorted(root.glob(pattern)):
            if p.name.startswith("._"):
                continue
            out.setdefault(p.stem, p.relative_to(root).as_posix())
    return out
