"""End to end through the real ``avx`` command: demo, store init/info/validate, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avx.extract.backbones import list_backbones
from tests.conftest import FIXTURES, run_avx

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
    assert set(info["streams"]) == {"faces", "audio/mfcc", "video/mobilenetv2"}
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
    """An unknown corpus is reported without importing torch (which takes seconds)."""
    code = (
        "import sys\n"
        "from avx.cli import main\n"
        "sys.argv = ['avx', 'extract', '--corpus', 'nosuch', '--root', '.', '--store', 'x.zarr',"
        " '--backbone', 'mfcc']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "unknown corpus 'nosuch'" in proc.stderr and "exit 2" in proc.stdout
    assert "torch imported: False" in proc.stdout
