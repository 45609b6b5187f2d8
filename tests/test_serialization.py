"""Artefacts from other people are data, never code: configs round-trip through JSON,
weights through safetensors, checkpoints survive SIGKILL, and no shared file (run,
resume checkpoint, backbone checkpoint, corpus pickle, remote store) can run code."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import types
import typing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import torch

import avx
from avx.errors import AvxError, StoreError
from avx.fuse.data import DataConfig
from avx.fuse.run_folder import FusionRun, load_run
from avx.fuse.train import TrainConfig, train
from avx.serialization import atomic_write, from_dict, load_tensors, restricted_loads, to_dict
from avx.store_schema import consolidate, open_store
from tests.conftest import run_avx, synthetic_store

# -- every config dataclass round-trips -------------------------------------------------


def _config_classes() -> list[type]:
    """Every ``*Config`` dataclass defined anywhere in avx (no hand-kept list)."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(avx.__path__, "avx."):
        if info.name == "avx.__main__":
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and (obj.__name__.endswith("Config") or obj.__name__ in ("TaskSpec", "StreamInfo"))
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CONFIGS = _config_classes()


def _example(tp: Any, default: Any, depth: int = 0) -> Any:
    """A value of annotation ``tp`` that differs from ``default`` wherever the type allows."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _example(options[depth % len(options)], default, depth)
    if origin is Literal:
        return next((a for a in args if a != default), args[0])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_example(args[0], None), _example(args[0], None))
        return tuple(_example(a, None, i + 1) for i, a in enumerate(args))
    if origin is list:
        return [_example(args[0], None)]
    if origin is dict:
        return {"k": _example(args[1], None) if args[1] is not Any else [1, "two"]}
    if dataclasses.is_dataclass(tp):
        return _instance(tp)
    if tp is bool:
        return not default if isinstance(default, bool) else True
    if tp is int:
        return default + 3 if isinstance(default, int) else 7
    if tp is float:
        return default + 0.375 if isinstance(default, float) else 0.625
    if tp is str:
        return f"{default}-x" if isinstance(default, str) else "x"
    return default


def _instance(cls: type) -> Any:
    hints = get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()
            if f.default_factory is not dataclasses.MISSING
            else None
        )
        kw[f.name] = _example(hints[f.name], default)
    return cls(**kw)


def test_config_classes_are_found() -> None:
    names = {c.__name__ for c in CONFIGS}
    assert {"TrainConfig", "DataConfig", "TaskSpec", "StreamInfo", "ColdConfig", "SfavConfig"} <= names


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_round_trips_through_json(cls: type) -> None:
    x = _instance(cls)
    back = from_dict(cls, json.loads(json.dumps(to_dict(x))))
    assert back == x
    for f in dataclasses.fields(cls):  # tuples stay tuples, nested configs stay dataclasses
        assert type(getattr(back, f.name)) is type(getattr(x, f.name)), f.name
    with pytest.raises(AvxError, match="unknown field"):
        from_dict(cls, {**to_dict(x), "not_a_field": 1})


def test_from_dict_rejects_wrong_types() -> None:
    d = to_dict(DataConfig(streams=("audio/a",)))
    with pytest.raises(TypeError, match=r"DataConfig\.fold"):
        from_dict(DataConfig, {**d, "fold": "zero"})
    with pytest.raises(ValueError, match=r"DataConfig\.bins"):
        from_dict(DataConfig, {**d, "bins": [0.1]})


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    atomic_write(f, b"old")

    def broken(fh: typing.IO[bytes]) -> None:
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(f, broken)
    assert f.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# -- runs ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the file ``marker`` (what a crafted file could do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_store(tmp_path_factory.mktemp("ser") / "s.zarr", seed=0, n=40)


def _cfg(store: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(
        store=str(store),
        method="late",
        data=DataConfig(streams=("audio/syn", "video/syn"), labels="intended"),
        epochs=kw.pop("epochs", 3),
        batch_size=8,
        bootstrap=0,
        method_config={"hidden": 8, "layers": 1},
        **kw,
    )


@pytest.fixture(scope="module")
def trained(small_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    train(_cfg(small_store), out)
    return out


def test_save_pretrained_round_trips_without_pickle(trained: Path, tmp_path: Path) -> None:
    run = FusionRun.from_pretrained(trained)
    assert {p.name for p in trained.iterdir()} >= {
        "config.json", "model.json", "model.safetensors", "normalizer.safetensors", "metrics.json",
    }  # fmt: skip
    assert not list(trained.rglob("*.pkl")) and not (trained / "model.pt").exists()
    run.save_pretrained(tmp_path / "copy")
    again = FusionRun.from_pretrained(tmp_path / "copy")
    assert again.config == run.config and again.names == run.names and again.threshold == run.threshold
    a, b = run.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for s in run.normalizer.mean:
        np.testing.assert_array_equal(run.normalizer.std[s], again.normalizer.std[s])
    assert json.loads((trained / "config.json").read_text())["method_config"] == {
        "hidden": 8, "layers": 1, "dropout": 0.5, "confidence": "predictive", "unimodal_weight": 1.0,
    }  # fmt: skip


def _legacy_copy(run: Path, dest: Path) -> Path:
    """``run`` as avx wrote runs before safetensors: pickled model.pt and last.pt."""
    r = FusionRun.from_pretrained(run)
    dest.mkdir()
    (dest / "config.json").write_text((run / "config.json").read_text())
    bundle = {
        "method": r.config.method,
        "method_config": asdict(r.model.config),
        "inputs": {s: asdict(i) for s, i in r.model.inputs.items()},
        "task": asdict(r.model.task),
        "names": r.names,
        "normalizer": r.normalizer.state_dict(),
        "threshold": r.threshold,
        "state_dict": r.model.state_dict(),
    }
    torch.save(bundle, dest / "model.pt")
    return dest


@pytest.mark.slow
def test_pickled_run_folders_are_refused_then_converted_on_request(trained: Path, tmp_path: Path) -> None:
    legacy = _legacy_copy(trained, tmp_path / "old")
    with pytest.raises(AvxError, match=r"model\.pt: run saved as a pickle.*avx fuse convert"):
        load_run(legacy)
    proc = run_avx("fuse", "eval", legacy, check=False)
    assert proc.returncode == 2 and "avx fuse convert" in proc.stderr
    assert "converted" in run_avx("fuse", "convert", legacy).stdout
    assert not (legacy / "model.pt").exists()
    a, b = load_run(trained).model.state_dict(), load_run(legacy).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    evil = _legacy_copy(trained, tmp_path / "evil")
    torch.save({"state_dict": _Payload(tmp_path / "PWNED")}, evil / "model.pt")
    for args in (("fuse", "eval", evil), ("fuse", "predict", evil)):
        proc = run_avx(*args, check=False)
        assert proc.returncode == 2 and "avx fuse convert" in proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_a_resume_checkpoint_with_a_payload_is_refused(small_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(small_store, epochs=2)
    run = tmp_path / "run"
    train(replace(cfg, epochs=1), run, keep_checkpoint=True)
    state = next((run / "checkpoint").glob("epoch-*.pt"))
    torch.save({"epoch": 1, "history": [_Payload(tmp_path / "PWNED")]}, state)
    with pytest.raises(AvxError, match=r"epoch-0001\.pt: refused"):
        train(cfg, run, resume=True)
    assert not (tmp_path / "PWNED").exists()
    (run / "checkpoint").rename(run / "moved")
    for f in ("model.safetensors", "metrics.json"):  # an interrupted run of an older avx
        (run / f).unlink()
    torch.save({"model": {}}, run / "last.pt")  # its pickled checkpoint
    with pytest.raises(AvxError, match=r"last\.pt: pickled checkpoint.*avx fuse convert"):
        train(cfg, run, resume=True)


_KILL_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
import avx.fuse.checkpoint as ck
from avx.fuse.train import TrainConfig, train

real = ck.atomic_write

def dying(path, data):
    if Path(path).name == "epoch-0002.pt":  # half of epoch 2's state is on disk, then SIGKILL
        def half(f):
            f.write(b"partial state")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, half)
    return real(path, data)

ck.atomic_write = dying
train(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2])
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_one(
    small_store: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, json.dumps(to_dict(_cfg(small_store, epochs=4))), str(run)],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert json.loads((run / "checkpoint" / "latest.json").read_text())["epoch"] == 1
    resumed = train(_cfg(small_store, epochs=4), run, resume=True, keep_checkpoint=True)
    reference = train(_cfg(small_store, epochs=4), tmp_path / "ref")
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(reference["history"]) and resumed["test"] == reference["test"]
    a, b = load_tensors(run / "model.safetensors"), load_tensors(tmp_path / "ref" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((run / "checkpoint").glob(".*.tmp"))  # a killed write's temporary file is swept
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "epoch-0003.pt",
        "epoch-0003.safetensors",
        "epoch-0004.pt",
        "epoch-0004.safetensors",
        "latest.json",
    ]  # fmt: skip (the previous epoch is kept: the fallback if the latest is torn)


def test_select_metric_loss_is_computed_and_selects(small_store: Path, tmp_path: Path) -> None:
    m = train(_cfg(small_store, epochs=3, select_metric="loss"), tmp_path / "loss")
    losses = [h["dev_loss"] for h in m["history"]]
    assert all(isinstance(v, float) and v > 0 for v in losses)
    assert m["selected_epoch"] == 1 + int(np.argmin(losses))
    with pytest.raises(AvxError, match="does not apply to multiclass"):
        _cfg(small_store, select_metric="ccc").check()


# -- corpus pickles and remote stores (the other two untrusted paths) --------------------


def test_restricted_unpickler_admits_arrays_and_plain_data_only(tmp_path: Path) -> None:
    import pickle

    data = {"a": np.arange(3, dtype=np.float32), "b": [1, 2.5, "x", b"y", None], "c": (np.int64(4),)}
    back = restricted_loads(pickle.dumps(data))
    np.testing.assert_array_equal(back["a"], data["a"]) and back["b"] == data["b"]
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        restricted_loads(pickle.dumps({"x": _Payload(tmp_path / "PWNED")}))
    assert not (tmp_path / "PWNED").exists()


def _evil_v2_store(root: Path, marker: Path) -> None:
    """A Zarr v2 store whose object array names the pickle codec and holds a payload."""
    import pickle

    attrs = {"avx_schema": 2, "corpus": "evil", "class_names": ["a"]}
    arr = {
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": None,
        "fill_value": None, "filters": [{"id": "pickle", "protocol": 4}], "order": "C",
    }  # fmt: skip
    (root / "samples" / "id").mkdir(parents=True)
    for d, meta in (("", {"zarr_format": 2}), ("samples", {"zarr_format": 2})):
        (root / d / ".zgroup").write_text(json.dumps(meta))
    (root / ".zattrs").write_text(json.dumps(attrs))
    (root / "samples" / "id" / ".zarray").write_text(json.dumps(arr))
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    (root / "samples" / "id" / "0").write_bytes(pickle.dumps(payload, protocol=4))
    meta = {".zgroup": {"zarr_format": 2}, ".zattrs": attrs, "samples/.zgroup": {"zarr_format": 2}}
    meta["samples/id/.zarray"] = arr
    (root / ".zmetadata").write_text(json.dumps({"zarr_consolidated_format": 1, "metadata": meta}))


def test_remote_store_with_a_pickle_codec_is_refused(
    http_root: tuple[Path, str], small_store: Path, tmp_path: Path
) -> None:
    import shutil

    www, url = http_root
    _evil_v2_store(www / "evil.zarr", tmp_path / "PWNED")
    with pytest.raises(StoreError, match=r"evil\.zarr: cannot open store"):
        open_store(f"{url}/evil.zarr").samples  # noqa: B018
    assert not (tmp_path / "PWNED").exists()
    # The same server serves a real (consolidated) avx store: the HTTP path itself works.
    shutil.copytree(small_store, www / "good.zarr")
    consolidate(www / "good.zarr")
    store = open_store(f"{url}/good.zarr")
    assert len(store.samples) == 40 and store.corpus == "synth"


def test_a_run_folder_is_always_one_run(small_store: Path, tmp_path: Path) -> None:
    """``--out`` holding a run is refused unless --overwrite (cleared first) or --resume;
    the checkpoint goes once the run is written; a failed run leaves no folder."""
    run = tmp_path / "run"
    first = train(_cfg(small_store, epochs=1), run)
    assert not (run / "checkpoint").exists() and (run / "model.safetensors").exists()
    with pytest.raises(AvxError, match=r"already holds a run .*--overwrite.*--resume"):
        train(_cfg(small_store, epochs=1, seed=1), run)
    assert json.loads((run / "metrics.json").read_text())["seed"] == first["seed"]  # untouched
    with pytest.raises(AvxError, match="this run is finished"):
        train(_cfg(small_store, epochs=1), run, resume=True)
    (run / "stale-extra.txt").write_text("from the old run")
    second = train(_cfg(small_store, epochs=1, seed=1), run, overwrite=True, keep_checkpoint=True)
    assert second["seed"] == 1 and not (run / "stale-extra.txt").exists()  # cleared, not mixed
    assert (run / "checkpoint" / "latest.json").exists()
    assert FusionRun.from_pretrained(run).config.seed == 1
    failed = tmp_path / "failed"
    with pytest.raises(AvxError):
        train(replace(_cfg(small_store, epochs=1), data=DataConfig(streams=("audio/none",))), failed)
    assert not failed.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"not": "a run"}')
    with pytest.raises(AvxError, match="not an avx run's; refusing to clear it"):
        train(_cfg(small_store, epochs=1), mine, overwrite=True)
    assert (mine / "config.json").exists()


def test_an_interrupted_run_is_never_evaluated(small_store: Path, tmp_path: Path) -> None:
    """Stopped after its first epoch: eval refuses the folder and says --resume continues it."""
    run = tmp_path / "run"

    def stop(epoch: int, _row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_store, epochs=2), run, on_epoch_end=stop)
    assert (run / "config.json").exists() and (run / "checkpoint").exists()  # kept for --resume
    with pytest.raises(
        AvxError, match=r"not a finished run directory \(no model\.json\); `--resume` continues"
    ):
        FusionRun.from_pretrained(run)
    with pytest.raises(AvxError, match="already holds a run"):
        train(_cfg(small_store, epochs=2), run)
    done = train(_cfg(small_store, epochs=2), run, resume=True)
    assert len(done["history"]) == 2 and FusionRun.from_pretrained(run).config.epochs == 2
