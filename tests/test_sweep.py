"""The experiment matrix: ``avx fuse sweep`` on a real Dask LocalCluster, resumed and
re-run cell by cell, and ``avx fuse report`` (tables, statistics, HTML, provenance)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.sweep.execute import cell_dir, prepare, run_cell, run_sweep, slurm_cluster, status, sweep_cells
from avx.fuse.sweep.html import SECTIONS
from avx.fuse.sweep.report import collect, write_report
from avx.fuse.sweep.spec import expand, load_spec
from tests.conftest import popen_avx, run_avx, synthetic_store

SPEC = """
[sweep]
name = "test sweep"
stores = ["{store}"]
methods = ["late", "early"]
streams = [["audio/syn", "video/syn"]]
labels = ["intended"]
seeds = 2

[train]
epochs = 2
bootstrap = 0
batch_size = 16

[eval]
settings = ["av", "a", "v", "mean"]
mask_frames = [0.5]

[report]
reference = "late"
n_boot = 200
{extra}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_store(tmp_path_factory.mktemp("sweep") / "s.zarr", seed=3, n=80)


def _spec(tmp: Path, store: Path, extra: str = "", name: str = "spec.toml") -> Path:
    p = tmp / name
    p.write_text(SPEC.format(store=store, extra=extra))
    return p


def _mtimes(sweep: Path) -> dict[str, int]:
    return {str(p.relative_to(sweep)): p.stat().st_mtime_ns for p in sweep.rglob("metrics.json")}


@pytest.fixture(scope="module")
def swept(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-method x 2-seed sweep, run once on a LocalCluster with 2 workers."""
    tmp = tmp_path_factory.mktemp("swept")
    st = run_sweep(load_spec(_spec(tmp, store)), tmp / "out", workers=2)
    assert st == {"cells": 4, "done": 4, "failed": 0, "pending": 0, "failures": []}
    return tmp / "out"


@pytest.mark.slow
def test_sweep_resumes_and_reruns_exactly_the_cell_whose_metrics_went(swept: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "out"
    shutil.copytree(swept, sweep)
    spec = load_spec(sweep / "spec.toml")
    before = _mtimes(sweep)
    assert len(before) == 4
    assert run_sweep(spec, sweep, workers=2)["done"] == 4
    assert _mtimes(sweep) == before  # nothing ran again
    gone = sweep / "cells" / "early" / "seed-1" / "metrics.json"
    gone.unlink()
    assert status(sweep)["pending"] == 1
    assert run_sweep(spec, sweep, workers=2)["done"] == 4
    after = _mtimes(sweep)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {str(gone.relative_to(sweep))}


def test_cells_are_ordinary_runs_with_their_cost(swept: Path) -> None:
    cells, _ = sweep_cells(swept)
    assert sorted(c.folder for c in cells) == ["early/seed-0", "early/seed-1", "late/seed-0", "late/seed-1"]
    for c in cells:
        run = cell_dir(swept, c)
        m = json.loads((run / "metrics.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        assert (m["method"], m["seed"], cfg["epochs"]) == (c.axes["method"], int(c.trial[5:]), 2)
        cost = m["cost"]
        assert cost["epochs"] == 2 and cost["wall_seconds"] >= cost["seconds_per_epoch"] * 2 > 0
        assert cost["parameters"] == m["complexity"]["parameters"] > 0
        assert 50 < cost["peak_rss_mib"] < 24_000 and cost["peak_gpu_mib"] is None
        assert cost["inference_frames_per_second"] > cost["inference_clips_per_second"] > 0
        assert (run / "eval.json").exists() and (run / "eval_predictions.csv").exists()


@pytest.mark.slow
def test_a_failing_cell_does_not_stop_the_others(store: Path, tmp_path: Path) -> None:
    spec = tmp_path / "fails.toml"
    spec.write_text(
        f'[sweep]\nstores = ["{store}"]\nmethods = ["late"]\nstreams = [["audio/syn", "video/syn"]]\n'
        'labels = ["intended"]\nseeds = [0, 1]\n[train]\nepochs = 1\nbootstrap = 0\n'
        '[grid]\n"data.length" = [["bogus"], []]\n'
    )
    st = run_sweep(load_spec(spec), tmp_path / "out", workers=1)
    assert (st["done"], st["failed"], st["pending"]) == (2, 2, 0)
    assert all("bad length policy 'bogus'" in f["error"] for f in st["failures"])
    proc = run_avx("fuse", "sweep", "--status", tmp_path / "out")
    assert "4 cells: 2 done, 2 failed, 0 pending" in proc.stdout
    assert proc.stdout.count("bad length policy 'bogus'") == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\nmethods = ['late']\nstreams = [['a/b']]\n", "[sweep] stores is required"),
        ("[sweep]\nstores = ['s']\nstreams = [['a/b']]\n", "[sweep] needs methods"),
        ("[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = 'a/b'\n", "[sweep] streams must be a list"),
        (
            "[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = [['a/b']]\nbogus = 1\n",
            "unknown key 'bogus'",
        ),
        (
            "[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = [['a/b']]\n[grid]\nlrr = [1]\n",
            "unknown key 'lrr'",
        ),
        (
            "[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = [['a/b']]\ntrials = 2\nseeds = 2\n",
            "not both",
        ),
        (
            "[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = [['a/b']]\n[report]\nreference = 'x'\n",
            "reference 'x' is not one of the methods",
        ),
        (
            "[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = [['a/b']]\n[search]\nmode = 'grid'\n",
            "[search] needs a [search.space]",
        ),
        (
            "[sweep]\nstores = ['s']\nmethods = ['late']\nstreams = [['a/b']]\n"
            "[search.space]\nlr = {uniform = [2, 1]}\n",
            "lo < hi",
        ),
        ("[sweep\n", "not valid TOML"),
        ("[sweeps]\n", "unknown table [sweeps]"),
    ],
)
def test_spec_errors_are_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(AvxError) as e:
        load_spec(p)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_combination_fails_before_anything_runs(store: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, store, "[grid]\noptimizer = ['adam', 'rmsprop']\n"))
    with pytest.raises(AvxError, match="unknown optimizer 'rmsprop'"):
        expand(spec)


def test_holm_equals_statsmodels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, rng.integers(1, 12))
        p[rng.integers(len(p))] = p[0]  # ties
        np.testing.assert_allclose(M.holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    p = np.array([0.01, np.nan, 0.02, 0.3])
    np.testing.assert_allclose(M.holm(p)[[0, 2, 3]], multipletests(p[[0, 2, 3]], method="holm")[1])
    assert np.isnan(M.holm(p)[1])


def test_report_numbers_come_from_the_cells(swept: Path, tmp_path: Path) -> None:
    files = write_report(swept, tmp_path / "report")
    df = pd.read_csv(files["results.csv"])
    res = collect(swept)
    assert sorted(df["column"].unique()) == sorted(["AV", "A (video missing)", "V (audio missing)",
                                                    "M (mean of AV, A, V)"])  # fmt: skip
    for _, r in df.iterrows():
        vals = [
            float(c.eval_table.set_index("setting").loc[r["column"], r["metric"]]) for c in res.of(r["row"])
        ]
        assert r["mean"] == pytest.approx(np.mean(vals), abs=1e-6)
        assert r["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-6)
        assert r["lo"] <= r["hi"]
    # the interval: the bootstrap of the seeds' pooled predictions under that setting
    r = df[(df["row"] == "early") & (df["column"] == "A (video missing)")].iloc[0]
    preds = pd.concat([pd.read_csv(c.run / "eval_predictions.csv") for c in res.of("early")])
    preds = preds[preds["setting"] == "A (video missing)"]
    y, p = preds["target"].to_numpy(int), preds["pred"].to_numpy(int)
    want = M.bootstrap_scorer(r["metric"], y, p, np.arange(len(y)), len(y), n_boot=200, seed=0)
    assert (r["lo"], r["hi"]) == pytest.approx(want)
    # t-tests against late over the two seeds, Holm across the table
    early = df[df["row"] == "early"]
    for _, r in early.iterrows():
        mine = list(json.loads(r["values"]).values())
        ref = df[(df["row"] == "late") & (df["column"] == r["column"])]
        theirs = list(json.loads(ref["values"].iloc[0]).values())
        assert r["p"] == pytest.approx(M.paired_ttest(mine, theirs), nan_ok=True)
    tested = df["p"].notna()
    np.testing.assert_allclose(df.loc[tested, "p_holm"], multipletests(df.loc[tested, "p"], method="holm")[1])
    assert df[df["row"] == "late"]["p"].isna().all()
    # the bold mark is the best mean of each column
    for _, part in df.groupby("column"):
        assert part.loc[part["mean"].idxmax(), "best"] and part["best"].sum() == 1
    # results.md prints the same numbers; the HTML carries them per cell
    md = files["results.md"].read_text()
    assert "Holm" in md and f"{df['mean'].iloc[0]:.3f} ± {df['std'].iloc[0]:.3f}" in md
    page = files["report.html"].read_text()
    means = [float(x) for x in re.findall(r'data-mean="([^"]+)"', page)]
    assert sorted(means) == pytest.approx(sorted(df["mean"]), abs=1e-5)
    assert len(SECTIONS) == 8
    for section in SECTIONS:
        assert f"<section id='{section}'>" in page
    prov = json.loads(files["provenance.json"].read_text())
    assert len(prov["cells"]) == 4 and prov["avx_version"] and prov["machine"]["cpus"]
    assert all(len(s["fingerprint"]) == 64 for s in prov["stores"].values())


def test_search_selects_on_dev_and_reports_the_spread(store: Path, tmp_path: Path) -> None:
    extra = '[search]\nmode = "grid"\n[search.space]\nlr = [0.0001, 0.01]\n"set.hidden" = [16]\n'
    spec = load_spec(_spec(tmp_path, store, extra))
    cell = next(c for c in expand(spec) if c.folder == "late/seed-0")
    assert [d["values"] for d in cell.draws] == [
        {"lr": 0.0001, "set.hidden": 16},
        {"lr": 0.01, "set.hidden": 16},
    ]
    prepare(spec, tmp_path / "out")
    r = run_cell(cell.to_dict(), str(tmp_path / "out"), asdict(spec.eval))
    assert r["state"] == "done", r
    folder = cell_dir(tmp_path / "out", cell)
    s = json.loads((folder / "search.json").read_text())
    devs = [
        json.loads((folder / f"draw-{k}" / "metrics.json").read_text())["dev"][s["metric"]] for k in (0, 1)
    ]
    assert s["chosen"] == f"draw-{int(np.argmax(devs))}" and s["dev"] == max(devs)
    assert s["spread"]["dev"]["min"] == min(devs) and s["spread"]["dev"]["max"] == max(devs)
    cfg = json.loads((folder / "draw-1" / "config.json").read_text())
    assert cfg["lr"] == 0.01 and cfg["method_config"]["hidden"] == 16
    # the report reads the chosen draw and shows the search
    files = write_report(tmp_path / "out", tmp_path / "report", n_boot=50)
    md = files["results.md"].read_text()
    assert "Hyper-parameter search (chosen on dev)" in md and f"lr={s['values']['lr']}" in md
    assert "<section id='search'>" in files["report.html"].read_text()


def test_slurm_job_script(store: Path, tmp_path: Path) -> None:
    cluster = slurm_cluster({"queue": "gpu", "gpus": 1, "memory": "16GB", "walltime": "01:30:00", "cores": 4})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH -t 01:30:00",
        "#SBATCH --cpus-per-task=4",
    ):
        assert line in script, script
    assert "#SBATCH --mem=15G" in script or "#SBATCH --mem=16G" in script
    assert "distributed.cli.dask_worker" in script or "dask worker" in script or "dask-worker" in script


@pytest.mark.slow
def test_sweep_resumes_after_sigkill(store: Path, tmp_path: Path) -> None:
    """SIGKILL the sweep mid-way: its workers stop, and a re-run finishes the rest only."""
    spec = _spec(tmp_path, store)
    proc = popen_avx("fuse", "sweep", spec, "--out", tmp_path / "out", "--workers", "2")
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "out").rglob("cell.json")):
        time.sleep(0.5)
    workers = _children(proc.pid)
    assert workers, "the sweep started no worker process"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _mtimes(tmp_path / "out")
    assert done_before, "no cell finished before the kill"
    deadline = time.time() + 30  # the workers notice their sweep is gone
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
    st = run_sweep(load_spec(spec), tmp_path / "out", workers=2)
    assert st["done"] == 4
    after = _mtimes(tmp_path / "out")
    assert all(
        after[k] == v
        for k, v in done_before.items()
        if (tmp_path / "out" / k).parent.joinpath("cell.json").exists()
    )


def _children(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


@pytest.mark.slow
def test_report_renders_in_chromium(swept: Path, tmp_path: Path) -> None:
    """Headless Chromium loads report.html: every figure decodes, every section is there,
    and a screenshot is taken (the file is kept for a person to look at)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed (.ci/run installs Debian's chromium)"
    files = write_report(swept, tmp_path / "report")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
    ]  # fmt: skip
    url = files["report.html"].resolve().as_uri()
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-rendered="ok"' in dom, dom[:500]
    figures = int(re.search(r'data-figures="(\d+)"', dom).group(1))
    assert figures >= 3  # confusion matrices, reliability diagrams, robustness curves
    for section in ("Results", "Cost per row", "Confusion matrices", "Reliability diagrams", "Robustness"):
        assert f"<h2>{section}" in dom
    # the tables Chromium parsed equal results.csv
    df = pd.read_csv(files["results.csv"])
    means = [float(x) for x in re.findall(r'data-mean="([^"]+)"', dom)]
    assert sorted(means) == pytest.approx(sorted(df["mean"]), abs=1e-5)
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1280,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000


@pytest.mark.parametrize("spec", sorted(Path("docs/sweeps").glob("*.toml")), ids=lambda p: p.stem)
def test_docs_specs_expand_to_checked_configs(spec: Path, store: Path) -> None:
    """Each paper's example spec is valid: every cell's config resolves (preset applied)."""
    s = load_spec(spec, [f'sweep.stores=["{store}"]', "train.epochs=3"])
    cells = expand(s)
    assert len(cells) == len(s.trials) * np.prod([len(v) for v in s.axes.values()])
    assert all(c.config["epochs"] == 3 and c.config["store"] == str(store) for c in cells)
    assert len({c.folder for c in cells}) == len(cells) and len({c.key for c in cells}) == len(cells)
    reference = s.report.reference
    assert any(reference in (c.axes.get("method"), c.axes.get("preset")) for c in cells)


def test_sfav_spec_has_table_ii_layout(store: Path) -> None:
    s = load_spec("docs/sweeps/sfav-table2.toml", [f'sweep.stores=["{store}"]'])
    cells = expand(s)
    variants = ("lt1", "lt4", "it1", "it4", "ia1", "ia4")
    assert {c.axes["method"] for c in cells} == {f"sfav.{v}" for v in variants}
    assert {c.axes["dropout"] for c in cells} == {"none", "softhard"} and len(s.trials) == 3
    assert s.eval.settings == ("av", "a", "v", "mean") and s.report.groups == ("dropout",)
    sgd = cells[0].config
    assert (sgd["optimizer"], sgd["lr"], sgd["batch_size"]) == ("sgd", 0.04, 8)  # the preset's recipe
