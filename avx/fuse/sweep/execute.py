"""Running a sweep's cells on Dask: a local cluster, an existing scheduler, or Slurm.

Layout of ``SWEEP/``::

    sweep.json            the spec as read, every cell (axes, trial, resolved config, key)
    spec.toml             a copy of the spec file
    cells/<row>/<trial>/  one ordinary run directory per cell (``avx fuse train``'s files,
                          ``eval.json`` when the spec has [eval]), plus
        cell.json         written last: the cell's key, so a finished cell is recognised
        error.json        a failed cell's one-line error (removed when it succeeds)
        draw-K/           with [search]: one run per draw; search.json names the chosen one

A cell is *done* when its ``cell.json`` holds the key of its resolved config (and of its
eval settings) and its run has ``metrics.json``: re-running a sweep skips done cells, so
it resumes; deleting a cell's ``metrics.json`` re-runs exactly that cell; a cell whose
config changed in the spec is trained again from scratch; a cell interrupted mid-training
continues from its checkpoint.

Each worker runs one cell at a time (one thread; torch gets the machine's cores divided
among the workers) on its own GPU when there are GPUs (``cuda:<worker index % GPUs>``
on a local cluster; a Slurm job's own GPU), else on the CPU. A cell that fails records
its error and the others go on. If the sweep's own process dies (SIGKILL), its workers
stop within seconds (they watch it), so a re-run never races a stale worker; a lock file
refuses two sweeps on one folder.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from avx.errors import AvxError
from avx.fuse.sweep.spec import Cell, EvalSpec, SweepSpec, expand
from avx.serialization import write_json

CELLS = "cells"
CELL_FILE = "cell.json"
ERROR_FILE = "error.json"
SEARCH_FILE = "search.json"


# -- where things are ---------------------------------------------------------------------


def cell_dir(sweep: Path, cell: Cell) -> Path:
    return sweep / CELLS / cell.folder


def result_dir(folder: Path) -> Path:
    """The run a cell's results come from: the cell itself, or its chosen search draw."""
    s = folder / SEARCH_FILE
    if s.exists():
        return folder / json.loads(s.read_text())["chosen"]
    return folder


def eval_key(ev: EvalSpec) -> str:
    return json.dumps(asdict(ev), sort_keys=True, default=list)


def cell_state(sweep: Path, cell: Cell, ev: EvalSpec) -> str:
    """``done``, ``failed`` (its error.json) or ``pending``."""
    folder = cell_dir(sweep, cell)
    try:
        mark = json.loads((folder / CELL_FILE).read_text())
    except (OSError, ValueError):
        mark = {}
    if mark.get("key") == cell.key and mark.get("eval") == eval_key(ev):
        run = result_dir(folder)
        if (run / "metrics.json").exists() and (not ev.any or (run / "eval.json").exists()):
            return "done"
    return "failed" if (folder / ERROR_FILE).exists() else "pending"


def read_sweep(sweep: str | Path) -> dict[str, Any]:
    f = Path(sweep) / "sweep.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise AvxError(f"{sweep}: not a sweep folder (no sweep.json)") from None


def sweep_cells(sweep: str | Path) -> tuple[list[Cell], EvalSpec]:
    d = read_sweep(sweep)
    ev = EvalSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["eval"].items()})
    return [Cell.from_dict(c) for c in d["cells"]], ev


def status(sweep: str | Path) -> dict[str, Any]:
    """Counts of done, failed and pending cells, and each failed cell's error."""
    sweep = Path(sweep)
    cells, ev = sweep_cells(sweep)
    counts = {"done": 0, "failed": 0, "pending": 0}
    failed = []
    for c in cells:
        st = cell_state(sweep, c, ev)
        counts[st] += 1
        if st == "failed":
            err = json.loads((cell_dir(sweep, c) / ERROR_FILE).read_text())
            failed.append({"cell": c.folder, "row": c.row, "trial": c.trial, "error": err["error"]})
    return {"cells": len(cells), **counts, "failures": failed}


# -- one cell (runs on a worker) ----------------------------------------------------------


def run_cell(
    cell: dict[str, Any],
    sweep: str,
    ev: dict[str, Any],
    *,
    threads: int | None = None,
    parent: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; never raises: a failure is returned and
    written to the cell's ``error.json``."""
    c = Cell.from_dict(cell)
    spec_eval = EvalSpec(**ev)
    folder = cell_dir(Path(sweep), c)
    started = time.time()
    if parent is not None:
        _watch_parent(parent)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        (folder / ERROR_FILE).unlink(missing_ok=True)
        device = _device(c.config.get("device", "auto"))
        if c.draws:
            run = _search(c, folder, device)
        else:
            run = folder
            _train(c.config, folder, device)
        if spec_eval.any:
            _evaluate(run, spec_eval, device)
        write_json(
            folder / CELL_FILE,
            {
                "key": c.key,
                "eval": eval_key(spec_eval),
                "row": c.row,
                "trial": c.trial,
                "axes": c.axes,
                "seconds": round(time.time() - started, 2),
                "device": device,
            },
        )
        return {"cell": c.folder, "state": "done", "seconds": time.time() - started}
    except Exception as e:
        line = " ".join(str(e).split()) or type(e).__name__
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / ERROR_FILE,
            {"error": f"{type(e).__name__}: {line}" if not isinstance(e, AvxError) else line,
             "traceback": traceback.format_exc()},
        )  # fmt: skip
        return {"cell": c.folder, "state": "failed", "error": line, "seconds": time.time() - started}


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(str(name).rsplit("-", 1)[-1]) if str(name).rsplit("-", 1)[-1].isdigit() else 0
    except (ImportError, ValueError):
        index = 0
    return f"cuda:{index % torch.cuda.device_count()}"


def _train(config: dict[str, Any], folder: Path, device: str) -> dict[str, Any]:
    """Train ``config`` into ``folder``: reuse a finished run of the same config, resume an
    interrupted one, replace anything else."""
    from avx.fuse.run_files import is_finished
    from avx.fuse.run_folder import read_config_extras, run_key
    from avx.fuse.train import TrainConfig, train

    cfg = TrainConfig.from_dict({**config, "device": device})
    same = (folder / "config.json").exists() and read_config_extras(folder).get("run") == run_key(cfg)
    if same and is_finished(folder):
        return json.loads((folder / "metrics.json").read_text())
    quiet = Console(stderr=True, quiet=True)
    if same and (folder / "checkpoint").exists():
        return train(cfg, folder, console=quiet, resume=True)
    if folder.exists():
        for f in folder.iterdir():  # a stale or half-written run of another config
            if f.name not in (CELL_FILE, ERROR_FILE):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    (folder / CELL_FILE).unlink(missing_ok=True)
    return train(cfg, folder, console=quiet)


def _search(c: Cell, folder: Path, device: str) -> Path:
    """Every draw trained in ``draw-K/``; the best on dev (the run's selection metric) is
    chosen. ``search.json`` reports the chosen values, its dev/test scores and the spread
    of dev and test scores across draws."""
    import numpy as np

    from avx.fuse import metrics as M

    results = []
    for k, d in enumerate(c.draws):
        m = _train(d["config"], folder / f"draw-{k}", device)
        metric = m["select_metric"]
        results.append({"draw": f"draw-{k}", "values": d["values"], "metric": metric,
                        "dev": m["dev"].get(metric), "test": m["test"].get(metric)})  # fmt: skip
    metric = results[0]["metric"]
    sign = M.SCORERS[metric].sign
    best = max(results, key=lambda r: sign(r["dev"]) if r["dev"] is not None else -np.inf)
    dev = np.array([r["dev"] for r in results], float)
    test = np.array([r["test"] for r in results], float)
    spread = {
        split: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                "min": float(np.min(v)), "max": float(np.max(v))}
        for split, v in (("dev", dev), ("test", test))
    }  # fmt: skip
    write_json(
        folder / SEARCH_FILE,
        {"chosen": best["draw"], "values": best["values"], "metric": metric, "dev": best["dev"],
         "test": best["test"], "spread": spread, "draws": results},
    )  # fmt: skip
    return folder / best["draw"]


def _evaluate(run: Path, ev: EvalSpec, device: str) -> None:
    from avx.fuse.robustness import evaluate_run

    evaluate_run(
        run,
        modality_table=ev.settings,
        missing=list(ev.missing),
        noise=list(ev.noise),
        snr=ev.snr,
        mask_frames=list(ev.mask_frames),
        occlude=list(ev.occlude),
        absent=ev.absent,
        device=device,
    )


def _watch_parent(pid: int) -> None:
    """End this worker process when the sweep's process is gone (SIGKILL leaves
    multiprocessing children running otherwise), so a re-run never races it."""

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(1.0)

    if not getattr(_watch_parent, "started", False):
        threading.Thread(target=watch, daemon=True, name="avx-sweep-parent").start()
        _watch_parent.started = True  # type: ignore[attr-defined]


# -- the sweep ----------------------------------------------------------------------------


def prepare(spec: SweepSpec, out: str | Path) -> tuple[Path, list[Cell]]:
    """Expand the spec (every config checked before anything runs) and write ``sweep.json``."""
    out = Path(out)
    cells = expand(spec)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "spec.toml").exists() or not (out / "spec.toml").samefile(spec.path):
        shutil.copyfile(spec.path, out / "spec.toml")
    write_json(
        out / "sweep.json",
        {
            "name": spec.name,
            "spec": str(spec.path),
            "axes": {k: [v if v is None or isinstance(v, str | int | float | bool) else str(v) for v in vs]
                     for k, vs in spec.axes.items()},
            "varying": spec.varying,
            "trials": list(spec.trials),
            "eval": asdict(spec.eval),
            "report": asdict(spec.report),
            "search": asdict(spec.search) if spec.search else None,
            "cells": [c.to_dict() for c in cells],
        },
    )  # fmt: skip
    return out, cells


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    slurm: dict[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every cell not yet done; returns the status after the run."""
    from filelock import FileLock, Timeout

    console = console or Console(stderr=True)
    out, cells = prepare(spec, out)
    lock = FileLock(str(out / ".sweep.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise AvxError(f"{out}: another sweep is running on this folder (.sweep.lock)") from None
    try:
        todo = [c for c in cells if cell_state(out, c, spec.eval) != "done"]
        console.print(f"{spec.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")
        if todo:
            _dispatch(todo, out, spec, workers, scheduler, slurm, console)
    finally:
        lock.release()
    return status(out)


def _dispatch(
    todo: list[Cell],
    out: Path,
    spec: SweepSpec,
    workers: int | None,
    scheduler: str | None,
    slurm: dict[str, Any] | None,
    console: Console,
) -> None:
    import dask
    from distributed import Client, LocalCluster, as_completed

    workers = workers or spec.cluster.workers
    scheduler = scheduler or spec.cluster.scheduler
    threads = parent = None  # local workers only: a remote one cannot see this process
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "logging.distributed": "error"}):
        if scheduler:
            cluster, client = None, Client(scheduler)
        elif slurm is not None:
            cluster = slurm_cluster({**spec.cluster.slurm, **slurm})
            cluster.scale(jobs=int({**spec.cluster.slurm, **slurm}.get("jobs", workers)))
            client = Client(cluster)
        else:
            threads, parent = max(1, (os.cpu_count() or 1) // workers), os.getpid()
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                memory_limit=0, silence_logs=50,
            )  # fmt: skip
            client = Client(cluster)
        try:
            ev = asdict(spec.eval)
            futures = [
                client.submit(run_cell, c.to_dict(), str(out), ev, threads=threads, parent=parent,
                              pure=False, key=f"cell-{c.folder}-{c.key}")
                for c in todo
            ]  # fmt: skip
            for done, fut in enumerate(as_completed(futures), 1):
                try:
                    r = fut.result()
                except Exception as e:
                    r = {"cell": "?", "state": "failed", "error": str(e).splitlines()[0], "seconds": 0}
                mark = "done" if r["state"] == "done" else f"FAILED: {r['error']}"
                console.print(
                    f"[{done}/{len(todo)}] {r['cell']}: {mark} ({r['seconds']:.1f} s)", highlight=False
                )
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def slurm_cluster(options: dict[str, Any]) -> Any:
    """A dask-jobqueue ``SLURMCluster`` for the options (queue/partition, gpus per job,
    memory, walltime, cores, account, job_extra): one worker per job, one GPU each."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise AvxError("--slurm needs dask-jobqueue: pip install 'avx[cluster]'") from None
    gpus = int(options.get("gpus", 1))
    extra = [f"--gres=gpu:{gpus}"] if gpus else []
    extra += list(options.get("job_extra", []))
    return SLURMCluster(
        queue=options.get("queue"),
        account=options.get("account"),
        cores=int(options.get("cores", 4)),
        processes=1,
        memory=str(options.get("memory", "16GB")),
        walltime=str(options.get("walltime", "02:00:00")),
        job_extra_directives=extra,
        scheduler_options={"dashboard_address": None},
    )
