"""The sweep spec (``avx fuse sweep SPEC.toml``): a paper's table as one declarative file.

A spec names the stores and lists the values of each axis of the table; every
combination is a *row* of the table and every trial (fold or seed) of a row is a
*cell*: one ordinary run directory made by :func:`avx.fuse.train.train`. Example
(``docs/sweeps/`` holds one per seed paper)::

    [sweep]
    stores = ["demo.zarr"]                  # relative to the spec's folder
    methods = ["sfav.lt1", "sfav.ia1"]
    presets = ["sfav-ravdess"]              # optional, one axis value each
    streams = [["video/efficientface.sfav", "audio/mfcc.sfav"]]
    labels = ["av"]
    tasks = ["multiclass"]
    trials = 3                               # folds 0..2 (or seeds = 3, or seeds = [0, 7])

    [train]                                  # any TrainConfig field; data fields in [train.data]
    epochs = 20

    [grid]                                   # further axes: a TrainConfig field, data.X or set.KEY
    dropout = ["none", "softhard"]

    [eval]                                   # avx fuse eval's settings, run on every cell
    settings = ["av", "a", "v", "mean"]

    [search]                                 # optional hyper-parameter search per cell, on dev
    mode = "random"                          # or grid
    draws = 4
    [search.space]
    lr = [0.01, 0.04]                        # choices, or {uniform = [a, b]}, {log_uniform = [a, b]}

    [report]
    metric = "accuracy"
    reference = "sfav.lt1"                   # the method the t-tests compare against
    groups = ["dropout"]                     # axes that split the table into blocks
    columns = "settings"                     # eval settings as columns (SFAV Table II), or metrics

    [cluster]                                # defaults for the command line's options
    workers = 2
    slurm = { queue = "gpu", gpus = 1, memory = "16GB", walltime = "02:00:00", cores = 4 }

Every error is one line naming the spec file and the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from avx.errors import AvxError

AXES = ("store", "method", "preset", "streams", "labels", "task")
"""The named axes of ``[sweep]`` (their lists: stores, methods, presets, ...)."""

SEARCH_MODES = ("grid", "random")
COLUMNS = ("settings", "metrics")
SLURM_KEYS = ("queue", "gpus", "memory", "walltime", "cores", "account", "job_extra", "jobs")


@dataclass(frozen=True)
class SearchSpec:
    """``[search]``: hyper-parameter search inside every cell, selected on dev only."""

    mode: str = "random"
    draws: int = 4
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSpec:
    """``[eval]``: the settings ``avx fuse eval`` scores every cell under (its options)."""

    settings: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    noise: tuple[str, ...] = ()
    snr: float | None = None
    mask_frames: tuple[float, ...] = ()
    occlude: tuple[float, ...] = ()
    absent: str = "missing"
    groups: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.settings or self.missing or self.noise or self.mask_frames or self.occlude)


@dataclass(frozen=True)
class ReportSpec:
    """``[report]``: the table's metric, reference, blocks and columns."""

    metric: str | None = None
    reference: str | None = None
    groups: tuple[str, ...] = ()
    columns: str = "settings"
    n_boot: int = 1000


@dataclass(frozen=True)
class ClusterSpec:
    """``[cluster]``: where cells run when the command line does not say."""

    workers: int = 1
    scheduler: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """A whole spec, validated. ``axes`` maps each axis to its values (one value: a
    fixed setting, several: the table varies it); ``trials`` are ``fold-K`` or ``seed-S``."""

    path: Path
    name: str
    axes: dict[str, list[Any]]
    method_presets: dict[str, str]  # a method's own recipe where the preset axis gives none
    trials: tuple[str, ...]
    train: dict[str, Any]
    search: SearchSpec | None
    eval: EvalSpec
    report: ReportSpec
    cluster: ClusterSpec

    @property
    def varying(self) -> list[str]:
        """Axes with more than one value: what tells the table's rows apart."""
        return [a for a, v in self.axes.items() if len(v) > 1]


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a row's axis values and one trial."""

    row: str  # the row's label in the tables, e.g. "sfav.ia1 · dropout=softhard"
    folder: str  # relative to SWEEP/cells: "<row slug>/fold-0"
    axes: dict[str, Any]
    trial: str  # fold-K | seed-S
    config: dict[str, Any]  # the resolved TrainConfig, as config.json writes it
    key: str  # hash of the resolved config: a cell with this key and metrics.json is done
    draws: tuple[dict[str, Any], ...] = ()  # search: each draw's values and resolved config

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(**{**d, "draws": tuple(d.get("draws") or ())})


# -- loading and validation ---------------------------------------------------------------


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and validate ``path`` (TOML); every problem is one :class:`AvxError` line.

    ``overrides`` are ``TABLE.KEY=VALUE`` (a TOML value; ``train.epochs=20``,
    ``sweep.stores=["/data/cremad.zarr"]``, ``train.data.memory_gb=4``), applied before
    validation: the same spec file serves a quick run and the paper's."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AvxError(f"{path}: no such sweep spec") from None
    except tomllib.TOMLDecodeError as e:
        raise AvxError(f"{path}: not valid TOML ({e})") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2:
            raise AvxError(f"{path}: override '{item}' is not TABLE.KEY=VALUE (e.g. train.epochs=20)")
        try:
            v = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            v = value.strip()  # a bare word: a string
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise AvxError(f"{path}: override '{item}': {p} is not a table")
        node[parts[-1]] = v
    return parse_spec(raw, path)


def parse_spec(raw: dict[str, Any], path: Path) -> SweepSpec:
    def bad(msg: str) -> AvxError:
        return AvxError(f"{path}: {msg}")

    known = {"sweep", "train", "grid", "eval", "search", "report", "cluster"}
    if unknown := set(raw) - known:
        raise bad(f"unknown table [{sorted(unknown)[0]}]; valid: {', '.join(sorted(known))}")
    sw = dict(raw.get("sweep") or {})
    allowed = {"name", "stores", "methods", "presets", "method_presets", "streams", "labels", "tasks"}
    allowed |= {"trials", "seeds"}
    if unknown := set(sw) - allowed:
        raise bad(f"[sweep] unknown key '{sorted(unknown)[0]}'; valid: {', '.join(sorted(allowed))}")
    stores = _strings(sw.get("stores"), "[sweep] stores", bad, required=True)
    base = path.parent
    stores = [s if "://" in s or Path(s).is_absolute() else str((base / s).resolve()) for s in stores]
    methods = _strings(sw.get("methods"), "[sweep] methods", bad, required=False)
    presets = _strings(sw.get("presets"), "[sweep] presets", bad, required=False)
    if not methods and not presets:
        raise bad("[sweep] needs methods (or presets, which imply theirs)")
    streams = sw.get("streams")
    if not isinstance(streams, list) or not streams:
        raise bad(
            "[sweep] streams must be a list of stream sets, e.g. [['video/efficientface', 'audio/mfcc']]"
        )
    sets = []
    for s in streams:
        items = s.split(",") if isinstance(s, str) else s
        if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
            raise bad(f"[sweep] streams: {s!r} is not a list of stream names")
        sets.append(",".join(x.strip() for x in items))
    axes: dict[str, list[Any]] = {
        "store": stores,
        "method": methods or [None],
        "preset": presets or [None],
        "streams": sets,
        "labels": _strings(sw.get("labels"), "[sweep] labels", bad, required=False) or ["av"],
        "task": _strings(sw.get("tasks"), "[sweep] tasks", bad, required=False) or ["multiclass"],
    }
    trials = _trials(sw, bad)
    method_presets = dict(sw.get("method_presets") or {})
    for m, p in method_presets.items():
        if m not in methods or not isinstance(p, str):
            raise bad(f"[sweep.method_presets] {m}: give a preset name for one of the methods")
    train = dict(raw.get("train") or {})
    _check_train(train, bad)
    grid = dict(raw.get("grid") or {})
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise bad(f"[grid] {k} must be a non-empty list of values")
        _check_key(k, "[grid]", bad)
        if k in AXES:
            raise bad(f"[grid] {k}: list it in [sweep] instead")
        axes[k] = list(v)
    search = _search(raw.get("search"), bad)
    ev = _table(EvalSpec, raw.get("eval"), "[eval]", bad)
    if ev.absent not in ("missing", "noise"):
        raise bad(f"[eval] absent takes missing or noise, not '{ev.absent}'")
    rep = _table(ReportSpec, raw.get("report"), "[report]", bad)
    if rep.columns not in COLUMNS:
        raise bad(f"[report] columns takes {' or '.join(COLUMNS)}, not '{rep.columns}'")
    for g in rep.groups:
        if g not in axes:
            raise bad(f"[report] groups: '{g}' is not an axis; valid: {', '.join(axes)}")
    names = [str(m) for m in [*axes["method"], *axes["preset"]] if m]
    if rep.reference is not None and rep.reference not in names:
        raise bad(
            f"[report] reference '{rep.reference}' is not one of the methods or presets ({', '.join(names)})"
        )
    if rep.metric is not None:
        from avx.fuse import metrics as M

        if rep.metric not in M.SCORERS:
            raise bad(f"[report] unknown metric '{rep.metric}'")
    cl = _table(ClusterSpec, raw.get("cluster"), "[cluster]", bad)
    if cl.workers < 1:
        raise bad("[cluster] workers must be >= 1")
    if unknown := set(cl.slurm) - set(SLURM_KEYS):
        raise bad(f"[cluster.slurm] unknown key '{sorted(unknown)[0]}'; valid: {', '.join(SLURM_KEYS)}")
    return SweepSpec(
        path=path,
        name=str(sw.get("name") or path.stem),
        axes=axes,
        method_presets=method_presets,
        trials=trials,
        train=train,
        search=search,
        eval=ev,
        report=rep,
        cluster=cl,
    )


def _strings(v: Any, where: str, bad: Any, *, required: bool) -> list[str]:
    if v is None:
        if required:
            raise bad(f"{where} is required")
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise bad(f"{where} must be a list of names")
    return list(v)


def _trials(sw: dict[str, Any], bad: Any) -> tuple[str, ...]:
    if "trials" in sw and "seeds" in sw:
        raise bad("[sweep] give trials (folds) or seeds, not both")
    if "trials" in sw:
        k = sw["trials"]
        if not isinstance(k, int) or k < 1:
            raise bad("[sweep] trials must be a number of folds >= 1")
        return tuple(f"fold-{f}" for f in range(k))
    seeds = sw.get("seeds", 1)
    if isinstance(seeds, int) and seeds >= 1:
        return tuple(f"seed-{s}" for s in range(seeds))
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
        return tuple(f"seed-{s}" for s in seeds)
    raise bad("[sweep] seeds must be a count >= 1 or a list of integers")


def _check_key(key: str, where: str, bad: Any) -> None:
    """A grid or search key: a TrainConfig field, ``data.X`` or ``set.KEY``."""
    from avx.fuse.data import DataConfig
    from avx.fuse.train import TrainConfig

    head, _, rest = key.partition(".")
    if head == "set" and rest:
        return
    if head == "data" and rest:
        if rest not in {f.name for f in fields(DataConfig)}:
            raise bad(f"{where} {key}: DataConfig has no field '{rest}'")
        return
    valid = {f.name for f in fields(TrainConfig)} - {"store", "data", "method_config"}
    if key not in valid and key not in AXES:
        raise bad(f"{where} unknown key '{key}'; use a training option, data.<field> or set.<method option>")


def _check_train(train: dict[str, Any], bad: Any) -> None:
    for k, v in train.items():
        if k == "data":
            if not isinstance(v, dict):
                raise bad("[train.data] must be a table")
            for dk in v:
                _check_key(f"data.{dk}", "[train.data]", bad)
        elif k == "set":
            if not isinstance(v, dict):
                raise bad("[train.set] must be a table of method options")
        elif k in AXES or k in ("store", "method"):
            raise bad(f"[train] {k}: list it in [sweep] instead")
        else:
            _check_key(k, "[train]", bad)


def _search(raw: Any, bad: Any) -> SearchSpec | None:
    if raw is None:
        return None
    s = _table(SearchSpec, raw, "[search]", bad)
    if s.mode not in SEARCH_MODES:
        raise bad(f"[search] mode takes grid or random, not '{s.mode}'")
    if not s.space:
        raise bad("[search] needs a [search.space] of values to try")
    for k, v in s.space.items():
        _check_key(k, "[search.space]", bad)
        if isinstance(v, dict):
            if s.mode == "grid":
                raise bad(f"[search.space] {k}: a grid search takes lists of values, not ranges")
            if len(v) != 1 or next(iter(v)) not in ("uniform", "log_uniform", "int_uniform"):
                raise bad(f"[search.space] {k}: a range is {{uniform|log_uniform|int_uniform = [lo, hi]}}")
            lo, hi = ([*next(iter(v.values())), None, None])[:2]
            if not isinstance(lo, int | float) or not isinstance(hi, int | float) or not lo < hi:
                raise bad(f"[search.space] {k}: the range needs two numbers lo < hi")
            if "log" in next(iter(v)) and lo <= 0:
                raise bad(f"[search.space] {k}: a log-uniform range needs lo > 0")
        elif not isinstance(v, list) or not v:
            raise bad(f"[search.space] {k} must be a non-empty list of values or a range")
    if s.draws < 1:
        raise bad("[search] draws must be >= 1")
    return s


def _table(cls: type, raw: Any, where: str, bad: Any) -> Any:
    raw = dict(raw or {})
    names = {f.name: f for f in fields(cls)}
    if unknown := set(raw) - set(names):
        raise bad(f"{where} unknown key '{sorted(unknown)[0]}'; valid: {', '.join(names)}")
    kw = {}
    for k, v in raw.items():
        default = names[k].default
        if isinstance(v, list) and (isinstance(default, tuple) or names[k].type.startswith("tuple")):
            v = tuple(v)
        kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise bad(f"{where}: {e}") from None


# -- expansion ----------------------------------------------------------------------------


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell: each combination of the axes, each trial; configs resolved (preset
    applied, checked) so a bad combination fails here, before anything runs."""
    from avx.fuse.run_folder import run_key

    cells: list[Cell] = []
    slugs: dict[str, str] = {}
    names = list(spec.axes)
    for values in itertools.product(*spec.axes.values()):
        axes = dict(zip(names, values, strict=True))
        row = row_label(spec, axes)
        slug = slugs.setdefault(row, _unique(_slug(row), set(slugs.values())))
        values_ = search_draws(spec.search) if spec.search else []
        for trial in spec.trials:
            cfg = resolve(spec, axes, trial)
            draws = [{"values": v, "config": resolve(spec, axes, trial, v).to_dict()} for v in values_]
            cells.append(
                Cell(
                    row=row,
                    folder=f"{slug}/{trial}",
                    axes={k: v for k, v in axes.items() if v is not None},
                    trial=trial,
                    config=cfg.to_dict(),
                    key=_hash(run_key(cfg), [d["values"] for d in draws]),
                    draws=tuple(draws),
                )
            )
    return cells


def _hash(run: str, draws: list[dict[str, Any]]) -> str:
    return hashlib.sha256((run + json.dumps(draws, sort_keys=True, default=str)).encode()).hexdigest()[:16]


def row_label(spec: SweepSpec, axes: dict[str, Any]) -> str:
    """The method (or preset), then every other varying axis as ``name=value``."""
    head = axes.get("method") or axes.get("preset") or "?"
    parts = [str(head)]
    for a in spec.varying:
        if a in ("method",) or (a == "preset" and not axes.get("method")):
            continue
        v = axes[a]
        if a == "store":
            v = Path(str(v)).name
        parts.append(f"{a}={v}")
    return " · ".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text.replace(" · ", "__")).strip("_")[:120] or "row"


def _unique(slug: str, taken: set[str]) -> str:
    out, k = slug, 1
    while out in taken:
        k += 1
        out = f"{slug}-{k}"
    return out


def resolve(
    spec: SweepSpec, axes: dict[str, Any], trial: str, overrides: dict[str, Any] | None = None
) -> Any:
    """The TrainConfig of one cell (and search draw): [train], then the axes, the
    trial and the draw's values; the preset fills in only what none of them set."""
    from avx.fuse.presets import apply_preset
    from avx.fuse.train import TrainConfig

    settings: dict[str, Any] = {}
    data: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for k, v in spec.train.items():
        if k == "data":
            data.update(v)
        elif k == "set":
            options.update(v)
        else:
            settings[k] = v
    for k, v in {**{a: x for a, x in axes.items() if a not in AXES}, **(overrides or {})}.items():
        head, _, rest = k.partition(".")
        if head == "set":
            options[rest] = v
        elif head == "data":
            data[rest] = v
        else:
            settings[k] = v
    data["streams"] = axes["streams"].split(",")
    data["labels"] = axes["labels"]
    data["task"] = axes["task"]
    settings.setdefault("device", "auto")  # each worker's GPU, else the CPU (see execute)
    kind, _, n = trial.partition("-")
    if kind == "fold":
        data["fold"] = int(n)
    else:
        settings["seed"] = int(n)
    explicit = {*settings, *data, *(["method"] if axes.get("method") else [])}
    try:
        cfg = TrainConfig.from_dict(
            {
                "store": axes["store"],
                "method": axes.get("method") or "",
                "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
                "method_config": options,
                **settings,
            }
        )
        preset = axes.get("preset") or spec.method_presets.get(axes.get("method") or "")
        if preset:
            cfg = apply_preset(cfg, preset, explicit)
        if not cfg.method:
            raise AvxError("no method (give methods, or a preset)")
        from avx.fuse.methods import METHODS

        METHODS.get(cfg.method)
        cfg.check()
    except (AvxError, TypeError, ValueError) as e:
        raise AvxError(f"{spec.path}: cell {row_label(spec, axes)} {trial}: {e}") from None
    return cfg


def search_draws(search: SearchSpec) -> list[dict[str, Any]]:
    """The search's configurations: every combination (grid) or ``draws`` random ones
    (lists: a uniform choice; ranges: uniform, log-uniform or integer), seeded."""
    keys = list(search.space)
    if search.mode == "grid":
        return [dict(zip(keys, v, strict=True)) for v in itertools.product(*search.space.values())]
    rng = np.random.default_rng(search.seed)
    out = []
    for _ in range(search.draws):
        d = {}
        for k, v in search.space.items():
            if isinstance(v, list):
                d[k] = v[int(rng.integers(len(v)))]
            else:
                ((kind, (lo, hi)),) = v.items()
                if kind == "uniform":
                    d[k] = float(rng.uniform(lo, hi))
                elif kind == "log_uniform":
                    d[k] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                else:
                    d[k] = int(rng.integers(int(lo), int(hi) + 1))
        out.append(d)
    return out
