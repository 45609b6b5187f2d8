"""``avx fuse eval`` and ``avx fuse predict``: a trained run under test-time conditions.

Settings (each scored with the run's own metrics, on ``split``):

- ``clean``;
- ``missing M`` — modality M (``audio``/``video``/``text`` or a stream name) absent,
  presented the way the method expects (presence mask, or zeros for early fusion);
- ``noise M`` — M replaced by N(0, 1) in the normalised feature space, or with
  ``snr`` N(0, s²) added at that signal-to-noise ratio; ``M:P`` corrupts only one run
  of consecutive frames covering a fraction P of each sample (random start);
- ``mask P`` — a random fraction P of every stream's frames zeroed (VAVL Fig. 2);
- ``occlude P`` — P of the face crops get a lower-face patch and the visual backbone
  is re-run on them (:mod:`avx.fuse.occlusion`).

``modality_table`` selects the modality table layout (SFAV's Table II and the
missing-modality tables of VAVL, LDDU and others): each key names the modalities kept,
by letter (``a`` audio, ``v`` video, ``t`` text; ``av``, ``a``, ``vt``, ...), every
other modality of the run absent; ``all`` is every non-empty subset of the run's
modalities (the 7 of a trimodal run), ``mean`` adds M, the mean over the subset rows.
For an audio-visual run ``av,a,v,mean`` gives AV (clean), A (the video absent), V and
M. With ``absent="noise"`` the dropped modalities are replaced by N(0, 1) instead (the
paper's table for noise-trained models). Every perturbation is seeded, so two
evaluations agree exactly.

For methods with per-frame fusion weights (COLD), settings that corrupt frames one by
one (``noise M:P``, ``mask P``, ``occlude P``) also report the mean weight of the
corrupted stream on its corrupted and on its clean frames.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.evaluate import (
    Perturbation,
    ReportOptions,
    calibration,
    jsonable,
    mean_weights,
    predict,
    report,
    weights_on_corrupted,
    write_predictions,
)
from avx.fuse.run_files import trial_runs
from avx.fuse.run_folder import FusionRun, load_run
from avx.fuse.runs import markdown
from avx.threads import announce


@dataclass(frozen=True)
class Setting:
    """One evaluation condition: a name and either a batch perturbation or an occlusion."""

    name: str
    perturbation: Perturbation | None = None
    occlude: float | None = None
    subset: str | None = None
    """For modality-table rows: the modalities kept (``AV``, ``T``)."""


LETTERS = {"a": "audio", "v": "video", "t": "text"}
"""Modality-table letters (``--settings av,t``)."""


def table_subsets(keys: tuple[str, ...], streams: list[str]) -> list[str]:
    """The modality-table keys, each the kept modalities in the run's letter order
    (``all`` expands to every non-empty subset of the run's modalities)."""
    have = [k for k, m in LETTERS.items() if any(s.split("/")[0] == m for s in streams)]
    out: list[str] = []
    for key in keys:
        if key == "mean":
            continue
        if key == "all":
            for r in range(len(have), 0, -1):
                out += ["".join(c) for c in itertools.combinations(have, r)]
            continue
        if not key or set(key) - set(LETTERS) or len(set(key)) != len(key):
            letters = ", ".join(f"{k}={m}" for k, m in LETTERS.items())
            raise AvxError(
                f"--settings takes mean, all or modality letters ({letters}), e.g. av,a,v,mean; got '{key}'"
            )
        if missing := set(key) - set(have):
            raise AvxError(
                f"--settings {key}: the run has no {', '.join(LETTERS[k] for k in sorted(missing))} stream"
                f" (its streams: {', '.join(streams)})"
            )
        out.append("".join(k for k in have if k in key))
    return list(dict.fromkeys(out))


def streams_of(what: str, streams: list[str]) -> tuple[str, ...]:
    """Streams named by a modality (``audio``) or a stream name."""
    hit = tuple(s for s in streams if s == what or s.split("/")[0] == what)
    if not hit:
        raise AvxError(f"no selected stream is '{what}'; the run uses {', '.join(streams)}")
    return hit


def build_settings(
    run: FusionRun,
    *,
    missing: list[str] = (),
    noise: list[str] = (),
    snr: float | None = None,
    mask_frames: list[float] = (),
    mask_modality: str | None = None,
    occlude: list[float] = (),
    modality_table: tuple[str, ...] = (),
    absent: str = "missing",
    seed: int = 0,
    missing_as: str | None = None,
) -> list[Setting]:
    """The settings asked for; ``missing_as`` overrides how the method presents an
    absent modality (``mask`` or ``zeros``)."""
    streams = run.model.streams
    policy = missing_as or run.model.missing
    if policy not in ("mask", "zeros"):
        raise AvxError(f"--missing-as takes mask or zeros, not '{policy}'")
    if absent not in ("missing", "noise"):
        raise AvxError(f"--absent takes missing or noise, not '{absent}'")
    if absent != "missing" and not modality_table:
        raise AvxError("--absent applies to the modality-table rows: give --settings too (e.g. av,a,v,mean)")
    subsets = table_subsets(tuple(modality_table), streams)
    if "mean" in modality_table and not subsets:
        raise AvxError(
            "--settings mean averages modality-table rows: name them too (e.g. av,a,v,mean or all)"
        )
    present = table_subsets(("all",), streams)[0] if subsets else ""
    if subsets and present not in subsets:  # the clean row (all modalities) always leads the table
        subsets.insert(0, present)
    out = [Setting("clean", subset=present.upper() if subsets else None)]
    for key in subsets:
        if key == present:
            continue
        dropped = [LETTERS[k] for k in present if k not in key]
        hit = tuple(s for m in dropped for s in streams_of(m, streams))
        p = (
            Perturbation("missing", hit, policy=policy, seed=seed)
            if absent == "missing"
            else Perturbation("noise", hit, seed=seed)
        )
        out.append(Setting(f"{key.upper()} ({', '.join(dropped)} {absent})", p, subset=key.upper()))
    for m in missing:
        p = Perturbation("missing", streams_of(m, streams), policy=policy, seed=seed)
        out.append(Setting(p.name, p))
    for m in noise:
        what, _, frac = m.partition(":")
        f = float(frac) if frac else 0.0
        if frac and not 0 < f <= 1:
            raise AvxError(f"--noise {m}: the fraction of frames must be in (0, 1]")
        p = Perturbation("noise", streams_of(what, streams), p=f, snr=snr, seed=seed)
        out.append(Setting(p.name, p))
    for frac in mask_frames:
        if not 0 < frac < 1:
            raise AvxError(f"--mask-frames takes a fraction in (0, 1), got {frac}")
        hit = streams_of(mask_modality, streams) if mask_modality else tuple(streams)
        p = Perturbation("mask", hit, p=frac, seed=seed)
        out.append(Setting(p.name if not mask_modality else f"mask {frac:g} of {mask_modality} frames", p))
    for frac in occlude:
        if not 0 < frac <= 1:
            raise AvxError(f"--occlude takes a fraction in (0, 1], got {frac}")
        out.append(Setting(f"occlude {frac:g} of faces", occlude=frac))
    return out


def evaluate_run(
    path: str | Path,
    settings: list[Setting] | None = None,
    *,
    store: str | None = None,
    split: str = "test",
    modality_table: tuple[str, ...] = (),
    device: str = "cpu",
    batch_size: int = 64,
    seed: int = 0,
    ece_bins: int = 15,
    console: Console | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Score run ``path`` under every setting; writes ``RUN/eval.json|csv|md`` and
    ``RUN/eval_predictions.csv`` (each setting's predictions, column ``setting``)."""
    run = load_run(path, device)
    settings = settings or build_settings(run, modality_table=modality_table, seed=seed, **kw)
    data = run.data(store)
    announce(console)
    if not len(data.indices(split)):
        raise AvxError(f"{path}: split '{split}' has no samples")
    opts = ReportOptions(threshold=run.threshold, ece_bins=ece_bins)
    results: dict[str, Any] = {}
    preds: dict[str, Any] = {}
    clean = None
    for st in settings:
        if console is not None:
            console.print(f"evaluating {path} on {split}: {st.name}", highlight=False)
        d = data
        if st.occlude is not None:
            from avx.fuse.occlusion import occluded_data

            d = occluded_data(data, st.occlude, split, seed=seed, device=device)
        pred = predict(run.model, d, split, batch_size, device, st.perturbation)
        results[st.name] = report(pred, d, opts, fairness=False)
        preds[st.name] = pred
        if pred.weights:
            results[st.name]["mean_fusion_weight"] = mean_weights(pred, run.model.streams)
        if shift := weights_on_corrupted(pred, run.model.streams):
            results[st.name]["fusion_weight"] = shift
        if st.perturbation is None and st.occlude is None:
            clean = pred
    cal: dict[str, Any] = {}
    if data.task == "multiclass":  # temperature scaling and top-label ECE need classes
        dev = predict(run.model, data, "dev", batch_size, device, per_stream=False)
        test = clean if clean is not None else predict(run.model, data, split, batch_size, device)
        cal = calibration(dev, test, data, ece_bins)
    out = {
        "run": str(path),
        "store": store or run.config.store,
        "split": split,
        "task": data.task,
        "settings": results,
        "calibration": cal,
    }
    cols = list(M.table_metrics(data.task, data.names))
    rows = [{"setting": n, **{c: r.get(c, np.nan) for c in cols}} for n, r in results.items()]
    n_table = 0
    if modality_table:
        kept = {st.name for st in settings if st.subset}
        rest = sum(1 for r in rows if r["setting"] not in kept)
        rows = modality_rows(rows, settings, "mean" in modality_table, cols)
        n_table = len(rows) - rest
    table = pd.DataFrame(rows)
    out["table"] = table.to_dict(orient="records")
    out["modality_rows"] = n_table  # the leading rows that form the modality table (with M)
    p = Path(path)
    (p / "eval.json").write_text(json.dumps(jsonable(out), indent=2))
    table.to_csv(p / "eval.csv", index=False)
    # every setting's predictions, for intervals over pooled trials (avx fuse report)
    write_predictions(p / "eval_predictions.csv", preds, data, run.threshold, column="setting")
    if masking := masking_rows(settings, results, data.task):
        pd.DataFrame(masking).to_csv(p / "masking.csv", index=False)
    md = markdown(table)
    cal = out["calibration"]
    if cal:
        md += (
            f"\n\nECE ({split}) before / after temperature scaling "
            f"(T = {cal['temperature']:.3f}, fitted on dev): {cal['ece_before']:.4f} / {cal['ece_after']:.4f}"
        )
    for name, r in results.items():
        for s, w in r.get("fusion_weight", {}).items():
            md += (
                f"\n\n{name}: mean fusion weight of {s} on corrupted / clean frames: "
                f"{w['corrupted']:.3f} / {w['clean']:.3f} ({w['n_corrupted']} / {w['n_clean']} frames)"
            )
    (p / "eval.md").write_text(md + "\n")
    out["markdown"] = md
    return out


def _fold_tables(path: Path, **kw: Any) -> tuple[list[int], list[pd.DataFrame]]:
    runs = trial_runs(path)
    per_fold = [evaluate_run(folder, **kw) for _, folder in runs]
    return [k for k, _ in runs], [pd.DataFrame(r["table"]).set_index("setting") for r in per_fold]


def evaluate_trials(path: str | Path, *, against: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    """:func:`evaluate_run` on every fold of a ``--trials`` directory, then each
    setting's mean and standard deviation over folds (the protocol SFAV and VAVL report:
    five speaker- or actor-independent partitions). Writes ``DIR/eval.json|csv|md``
    beside each fold's own, and ``DIR/masking.csv`` (mean and std over folds) when
    frames were masked.

    ``against``: another ``--trials`` directory over the same folds, evaluated under the
    same settings; every metric of every setting gets a paired two-tailed t-test over
    the folds (``scipy.stats.ttest_rel``; VAVL's Table 1 protocol), its p-value in a
    ``<metric> p`` column and a ``*`` in the table where p < 0.05. No correction for
    multiple comparisons is applied (as in the paper).
    """
    path = Path(path)
    folds, tables = _fold_tables(path, **kw)
    cols = list(tables[0].columns)
    ref_tables = None
    if against is not None:
        ref_folds, ref_tables = _fold_tables(Path(against), **kw)
        if ref_folds != folds:
            raise AvxError(f"--against {against}: folds {ref_folds} differ from {path}'s {folds}")
    rows = []
    stars: dict[tuple[str, str], bool] = {}
    for name in tables[0].index:
        vals = np.array([[t.loc[name, c] for c in cols] for t in tables], dtype=float)
        sd = vals.std(0, ddof=1) if len(folds) > 1 else np.zeros(len(cols))
        row = {
            "setting": name,
            **dict(zip(cols, vals.mean(0), strict=True)),
            **{f"{c} std": v for c, v in zip(cols, sd, strict=True)},
        }
        if ref_tables is not None:
            ref = np.array([[t.loc[name, c] for c in cols] for t in ref_tables], dtype=float)
            for j, c in enumerate(cols):
                p = paired_t_test(vals[:, j], ref[:, j])
                row[f"{c} p"] = p
                stars[(name, c)] = bool(p < 0.05)
        rows.append(row)
    table = pd.DataFrame(rows)
    head = f"mean over folds {', '.join(map(str, folds))} (std: sample, ddof=1)"
    if against is not None:
        head += f"; * p < 0.05, paired two-tailed t-test over folds against {against}"
    shown = table.copy()
    for (name, c), star in stars.items():
        if star:
            i = shown.index[shown["setting"] == name][0]
            shown[c] = shown[c].astype(object)
            shown.at[i, c] = f"{table.at[i, c]:.3f}*"
    md = head + "\n\n" + markdown(shown)
    out = {"run": str(path), "folds": folds, "table": table.to_dict(orient="records"), "markdown": md}
    if against is not None:
        out["against"] = str(against)
    (path / "eval.json").write_text(json.dumps(jsonable(out), indent=2))
    table.to_csv(path / "eval.csv", index=False)
    (path / "eval.md").write_text(md + "\n")
    masking = [folder / "masking.csv" for _, folder in trial_runs(path)]
    if all(f.exists() for f in masking):
        m = pd.concat([pd.read_csv(f) for f in masking])
        keys = ["rate", "masked", "head"]
        agg = m.groupby(keys, sort=False, dropna=False).agg(["mean", "std"])
        agg.columns = [c if s == "mean" else f"{c} std" for c, s in agg.columns]
        agg.reset_index().to_csv(path / "masking.csv", index=False)
    return out


paired_t_test = M.paired_ttest
"""The paired two-tailed t-test (:func:`avx.fuse.metrics.paired_ttest`), by its old name."""


def masking_rows(settings: list[Setting], results: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """VAVL Fig. 2's data: per masking rate, the table metrics of the fused output
    (``head = fused``) and of each stream's own head, on the masked input; the clean
    setting is rate 0. Empty when no ``--mask-frames`` setting was evaluated."""
    masked = [st for st in settings if st.perturbation is not None and st.perturbation.kind == "mask"]
    if not masked:
        return []
    cols = list(M.table_metrics(task))
    rows = []
    for st in [Setting("clean"), *masked]:
        r = results.get(st.name)
        if r is None:
            continue
        rate = st.perturbation.p if st.perturbation is not None else 0.0
        what = ",".join(st.perturbation.streams) if st.perturbation is not None else "none"
        heads = {"fused": r, **r.get("per_stream", {})}
        for head, m in heads.items():
            rows.append({"rate": rate, "masked": what, "head": head, **{c: m.get(c, np.nan) for c in cols}})
    return rows


def modality_rows(
    rows: list[dict[str, Any]], settings: list[Setting], mean: bool, cols: list[str]
) -> list[dict[str, Any]]:
    """The modality table first: its rows in the order asked (the clean setting named
    by its modalities, ``AV`` or ``AVT``) and, with ``mean``, M = their mean (SFAV's
    Table II); any other settings follow."""
    subset = {st.name: st.subset for st in settings if st.subset}
    table = [{**r, "setting": subset[r["setting"]] if r["setting"] == "clean" else r["setting"]}
             for r in rows if r["setting"] in subset]  # fmt: skip
    out = list(table)
    if mean and table:
        names = ", ".join(r["setting"].split(" (")[0] for r in table)
        out.append(
            {"setting": f"M (mean of {names})", **{c: float(np.mean([r[c] for r in table])) for c in cols}}
        )
    return out + [r for r in rows if r["setting"] not in subset]


def predict_run(
    path: str | Path,
    *,
    store: str | None = None,
    out: str | Path | None = None,
    split: str = "all",
    device: str = "cpu",
    batch_size: int = 64,
) -> Path:
    """Predictions of run ``path`` on ``store`` (default: its own), every sample of
    ``split`` (``all`` includes samples without labels or split). Writes
    ``OUT/predictions.csv`` (fused and per-stream outputs, fusion weights) and
    ``OUT/frames.npz`` (by id: per-frame fusion weights, uncertainties, fused and
    per-stream scores, targets and frame times, where the method and task have them;
    :func:`avx.fuse.plots.plot_frames` draws them)."""
    run = load_run(path, device)
    data = run.data(store, keep_unlabelled=True)
    out = Path(out) if out else Path(path) / "predict"
    out.mkdir(parents=True, exist_ok=True)
    splits = sorted(set(data.split)) if split == "all" else [split]
    preds = {}
    arrays: dict[str, np.ndarray] = {}
    for sp in splits:
        idx = data.indices(sp)
        if not len(idx):
            continue
        p = predict(run.model, data, idx, batch_size, device, keep_frames=True)
        preds[sp] = p
        for i, sid in enumerate(p.ids):
            if i < len(p.weights) and p.weights[i].ndim == 2:
                arrays[f"{sid}/fusion_weights"] = p.weights[i]
            for s, u in p.uncertainty.items():
                arrays[f"{sid}/uncertainty/{s}"] = u[i]
            if p.frame_scores:
                arrays[f"{sid}/scores"] = p.frame_scores[i]
            for s, sc in p.frame_stream_scores.items():
                arrays[f"{sid}/scores/{s}"] = sc[i]
            j = p.index[i]
            if data.target_frames is not None and data.target_frames[j] is not None:
                arrays[f"{sid}/target"] = data.target_frames[j]
            if j < len(data.ref_times) and data.ref_times[j] is not None:
                arrays[f"{sid}/times"] = data.ref_times[j]
    arrays["_meta/streams"] = np.asarray(run.model.streams)
    arrays["_meta/names"] = np.asarray(data.names)
    arrays["_meta/task"] = np.asarray(data.task)
    write_predictions(out / "predictions.csv", preds, data, run.threshold)
    np.savez_compressed(out / "frames.npz", **arrays)
    return out
