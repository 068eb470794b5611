"""The command line: demo on tiny settings, config/overrides, clear errors and exit codes."""
import json
import subprocess
import sys

import pytest

from invdiff.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "train-prior" in out


def test_demo_tiny_writes_outputs(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--set", 'tasks=["ct", "inpainting"]', "--set", "dds_steps=4",
               "--set", "threads=1"])
    assert rc == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {"ct-8view", "inpainting-random70"}
    by = {(r["task"], r["solver"]): r for r in rows}
    # the classical baselines must beat the adjoint on their natural task (measured, not asserted elsewhere)
    assert by[("ct-8view", "tv")]["PSNR"] > by[("ct-8view", "adjoint")]["PSNR"] + 5
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dds_steps"] == 4
    assert "| task | solver |" in capsys.readouterr().out


def test_demo_unknown_key_is_one_clear_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "argument '--set'" in err and "nope" in err


def test_demo_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub")]) == 2
    assert "argument '--out'" in capsys.readouterr().err


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "invdiff.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "invdiff" in r.stdout


@pytest.mark.parametrize("bad", [["bogus"], ["demo", "--config", "/nonexistent/cfg.json"]])
def test_bad_invocations_exit_nonzero(bad, capsys):
    with pytest.raises(SystemExit) if bad == ["bogus"] else _nullctx():
        rc = main(bad)
        assert rc == 2


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
