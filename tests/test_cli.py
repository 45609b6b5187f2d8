"""End to end through the real ``avx`` command: demo, store init/info/validate, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avx.extract.backbones import list_backbones
from tests.conftest import FIXTURES, run_avx, synthetic_store

COMMANDS = [
    [], ["demo"], ["extract"], ["list"], ["store"], ["store", "init"], ["store", "info"],
    ["store", "validate"], ["store", "consolidate"], ["fuse"], ["fuse", "train"],
    ["corpus"], ["corpus", "list"],
]  # fmt: skip


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "avx")
def test_help_on_every_command(cmd: list[str]) -> None:
    """In process (typer's runner): the real command is run as a subprocess just below."""
    from typer.testing import CliRunner

    from avx.cli import app

    result = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "--help" in result.output


def test_help_through_the_real_command() -> None:
    proc = run_avx("fuse", "train", "--help")
    assert "Usage: " in proc.stdout and "--preset" in proc.stdout and "--bootstrap" in proc.stdout


@pytest.mark.slow
def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "avx"
    proc = subprocess.run(
        [script, "list", "backbones", "--names"], capture_output=True, text=True, check=True
    )
    names = proc.stdout.split()
    assert names == list_backbones()
    required = ["mfcc", "vggish", "egemaps", "wav2vec2", "wavlm", "hubert", "text", "efficientface"]
    required += ["efficientnet-b2", "mobilenetv2", "emofan", "faces", "wavlm-large", "wavlm-base-plus"]
    assert {*required, "wav2vec2-large-robust"} <= set(names)


@pytest.mark.slow
def test_extract_list_shows_shapes_rates_and_weights() -> None:
    proc = run_avx("extract", "--list")
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "[T, 25, 1024]" in lines["wavlm-large"] and "50 Hz" in lines["wavlm-large"]
    assert "[T, 1024]" in lines["efficientface"] and "[T, 1408]" in lines["efficientnet-b2"]
    assert "[T, 128]" in lines["vggish.cold"] and "10 Hz" in lines["vggish.cold"]


@pytest.mark.slow
def test_store_init_from_metadata_only(tmp_path: Path) -> None:
    store = tmp_path / "c.zarr"
    proc = run_avx("store", "init", "--corpus", "cremad", "--root", FIXTURES / "cremad", "--store", store)
    assert "245 samples" in proc.stdout
    assert "valid (245 samples, 1 protocols)" in run_avx("store", "validate", store).stdout
    info = json.loads(run_avx("store", "info", store, "--json").stdout)
    assert info["corpus"] == "cremad" and info["streams"] == {} and info["raters"] == ["av", "face", "voice"]
    again = run_avx("store", "init", "--corpus", "cremad", "--root", FIXTURES / "cremad", "--store", store,
                    check=False)  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr


def test_validate_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.zarr").mkdir()
    proc = run_avx("store", "validate", tmp_path / "x.zarr", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("not an avx store (no zarr.json)")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_avx("demo", "--out", out, "--clips", "18", "--epochs", "3", "--seed", "0")
    assert "demo test results" in proc.stdout
    assert all(m in proc.stdout for m in ("late", "context", "mult"))
    store = out / "demo.zarr"
    assert "valid (18 samples" in run_avx("store", "validate", store, "--deep").stdout
    info = json.loads(run_avx("store", "info", store, "--json").stdout)
    assert set(info["streams"]) == {"faces", "audio/mfcc", "video/mobilenetv2", "audio/waveform"}
    for s in info["streams"].values():
        assert s["committed"] == 18
        assert s["provenance"]["created"]["avx_version"]
    assert info["streams"]["faces"]["provenance"]["detector"] == "mtcnn"
    assert info["streams"]["video/mobilenetv2"]["provenance"]["weights"] == "random-init"
    metrics = json.loads((out / "runs" / "mult" / "metrics.json").read_text())
    assert metrics["streams"] == ["audio/mfcc", "video/mobilenetv2"] and "macro_f1" in metrics["test"]
    # Re-running resumes: the corpus and store are reused, nothing is extracted again.
    again = run_avx("demo", "--out", out, "--clips", "18", "--epochs", "3", "--seed", "0")
    assert "reusing demo corpus" in again.stdout
    assert json.loads((out / "runs" / "mult" / "metrics.json").read_text())["test"] == metrics["test"]


def test_usage_errors_come_before_heavy_imports(tmp_path: Path) -> None:
    """Usage errors are answered without importing torch (which takes seconds)."""
    cases = {
        "unknown corpus 'nosuch'": "extract --corpus nosuch --root . --store x.zarr --backbone mfcc",
        "unknown --dtype 'int8'": "extract --corpus cremad --root . --store x --backbone mfcc --dtype int8",
        "give --method": "fuse train --store x --streams a --out r",
        "--threshold takes a number": "fuse train --store x --streams a --out r --method late --threshold x",
        "nope: no such store": "fuse train --store nope --streams a --out r --method x",
        "norun: no such run directory": "fuse eval norun",
        "half: not a finished run directory (no model.json); `--resume` continues it": "fuse predict half",
    }
    (tmp_path / "half" / "checkpoint").mkdir(parents=True)
    (tmp_path / "half" / "config.json").write_text("{}")
    code = (
        "import sys\nfrom avx.cli import main\n"
        f"for args in {list(cases.values())!r}:\n"
        "    sys.argv = ['avx', *args.split()]\n"
        "    try:\n        main()\n    except SystemExit as e:\n        print('exit', e.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(cases) and proc.stdout.count("exit 2") == len(cases), proc.stderr
    for line, message in zip(errors, cases, strict=True):
        assert line.startswith("error: ") and message in line
    assert "torch imported: False" in proc.stdout


@pytest.mark.slow  # two commands in subprocesses (~30 s); the in-process twin below is fast
def test_piped_output_shows_plain_progress_lines(demo_corpus: Path, tmp_path: Path) -> None:
    """Not a terminal (a log, CI, nohup): a line per committed part and per epoch, no bar."""
    proc = run_avx("extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", tmp_path / "e.zarr",
                   "--backbone", "mfcc", "--limit", "8", "--part-size", "4")  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("extract audio/mfcc: ")]
    assert lines[0].startswith("extract audio/mfcc: 4/8 clips (50%), ") and "clips/s" in lines[0]
    assert lines[-1].startswith("extract audio/mfcc: 8/8 clips (100%), ") and "elapsed" in lines[-1]
    assert "━" not in proc.stderr and "\x1b[" not in proc.stderr  # no bar, no escape codes
    assert any(ln.startswith("threads: ") for ln in proc.stderr.splitlines())  # the count is printed
    store = synthetic_store(tmp_path / "s.zarr", seed=0, n=40)
    proc = run_avx("fuse", "train", "--method", "late", "--out", tmp_path / "run", "--store", store,
                   "--streams", "audio/syn,video/syn", "--labels", "intended", "--epochs", "2",
                   "--set", "hidden=8", "--set", "layers=1", "--bootstrap", "0")  # fmt: skip
    epochs = [ln for ln in proc.stderr.splitlines() if ln.startswith("late epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["late epoch 1/2", "late epoch 2/2"]
    assert "train_task" in epochs[0] and "dev_macro_f1" in epochs[0] and "(best " in epochs[1]


def test_tables_fold_at_80_columns_instead_of_cutting() -> None:
    """Long stream and backbone names wrap; numbers and names are never cut to "…"."""
    import io

    from rich.console import Console

    from avx.fuse.runs import comparison_table, metrics_table
    from avx.registry import card_table

    streams = ["audio/wav2vec2-large-robust@all", "video/efficientface.sfav", "text/roberta-large@all"]
    res = {"macro_f1": 0.6123, "weighted_f1": 0.7012, "accuracy": 0.7534, "ci95": {"macro_f1": [0.5, 0.7]}}
    res["per_stream"] = {s: dict(res) for s in streams}
    metrics = {"task": "multiclass", "method": "sfav.ia1", "streams": streams, "dev": res, "test": res,
               "seconds_per_epoch": 12.5}  # fmt: skip
    backbones = __import__("avx.extract.backbones", fromlist=["BACKBONES"]).BACKBONES.cards()
    for table, shown in (
        (metrics_table(metrics, title="sfav.ia1 on /data/stores/a-long-path/ravdess.zarr (av)"), "0.612"),
        (comparison_table([metrics, {**metrics, "method": "context-transformer-long"}]), "[0.500,"),
        (card_table(backbones), "wav2vec2-large-robust"),
    ):
        console = Console(width=80, file=io.StringIO(), color_system=None)
        console.print(table)
        text = console.file.getvalue()
        assert "…" not in text and max(map(len, text.splitlines())) <= 80, text
        assert shown in text


@pytest.mark.slow  # imports transformers in a subprocess (~15 s)
def test_default_hub_weights_offline_is_one_line_saying_what_to_pass(
    demo_corpus: Path, tmp_path: Path
) -> None:
    """``--backbone wavlm-base-plus`` without --weights goes to its hub id (as the docs
    say); offline, that is one line naming the id and the local alternative."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "ignore"}
    args = ["extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", tmp_path / "s.zarr",
            "--backbone", "wavlm-base-plus"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "avx", *map(str, args)], capture_output=True, text=True, env=env
    )
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: microsoft/wavlm-base-plus: cannot load")
    assert (
        "offline, pass --weights wavlm-base-plus=/path/to/a/local file or save_pretrained folder" in lines[0]
    )


def test_thread_count_comes_from_the_flag_the_environment_or_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from avx.errors import AvxError
    from avx.threads import choose_threads, physical_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = physical_cores()
    assert choose_threads() == (cores, f"{cores} physical cores")
    assert choose_threads(workers=2)[0] == max(1, cores // 2) and choose_threads(workers=99)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(workers=2) == (3, "OMP_NUM_THREADS")
    assert choose_threads(5) == (5, "--threads")
    with pytest.raises(AvxError, match="--threads must be at least 1"):
        choose_threads(0)
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from avx.threads import set_threads

    before, pools = torch.get_num_threads(), threadpool_info()
    try:
        line = set_threads(1, workers=2)  # OMP_NUM_THREADS is restored by monkeypatch
        assert line == "threads: 1 per worker (--threads; change with --threads or OMP_NUM_THREADS)"
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    finally:
        torch.set_num_threads(before)
        threadpool_limits({p["prefix"]: p["num_threads"] for p in pools})


def test_plain_progress_lines_when_the_console_is_not_a_terminal(demo_corpus: Path, tmp_path: Path) -> None:
    """The same lines as above, written in-process to a console that is a file."""
    import io

    from rich.console import Console

    from avx.extract.run import ExtractOptions, extract
    from avx.fuse.data import DataConfig
    from avx.fuse.train import TrainConfig, train

    log = Console(file=io.StringIO(), width=200)
    assert not log.is_terminal
    extract("avx-demo", demo_corpus, tmp_path / "e.zarr",
            ExtractOptions(backbones=("mfcc",), limit=4, part_size=2), console=log)  # fmt: skip
    store = synthetic_store(tmp_path / "s.zarr", seed=0, n=40)
    cfg = TrainConfig(store=str(store), method="late", epochs=2, bootstrap=0, method_config={"hidden": 8},
                      data=DataConfig(streams=("audio/syn", "video/syn"), labels="intended"))  # fmt: skip
    train(cfg, tmp_path / "run", console=log)
    text = log.file.getvalue()
    parts = [ln for ln in text.splitlines() if ln.startswith("extract audio/mfcc: ")]
    assert parts[0].startswith("extract audio/mfcc: 2/4 clips (50%)") and "left" in parts[0]
    assert parts[-1].startswith("extract audio/mfcc: 4/4 clips (100%)")
    epochs = [ln for ln in text.splitlines() if ln.startswith("late epoch ")]
    assert (
        len(epochs) == 2
        and epochs[1].startswith("late epoch 2/2: train_task ")
        and "dev_macro_f1" in epochs[1]
    )
    assert "━" not in text  # no bar
