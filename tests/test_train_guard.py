"""train-prior never writes into the installed package by default (issue 11 item 6)."""
import hashlib

import pytest

from invdiff.priors import registry
from invdiff.training import train_prior_main

TINY = ["--size", "16", "--base-channels", "8", "--channel-mult", "1,2", "--emb-dim", "16", "--batch-size", "2",
        "--warmup", "1", "--steps", "2", "--ckpt-every", "2", "--log-every", "1", "--keep-every", "0",
        "--progress", "false", "--eval-images", "2", "--eval-sigmas", "0.2", "--sample-steps", "2", "--n-samples", "1"]


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_shipped_name_goes_to_run_folder_package_untouched(tmp_path):
    before = _hashes(registry.WEIGHTS_DIR)
    assert any(n.endswith(".safetensors") for n in before)
    assert train_prior_main(["--name", "ct-phantom-64", "--data", "ct", "--out", str(tmp_path), *TINY]) == 0
    assert _hashes(registry.WEIGHTS_DIR) == before
    run = tmp_path / "ct-phantom-64"
    assert (run / "ct-phantom-64.safetensors").is_file() and (run / "ct-phantom-64.md").is_file()


def test_export_over_shipped_needs_explicit_flag(tmp_path, monkeypatch, capsys):
    fake_pkg = tmp_path / "pkg_weights"
    fake_pkg.mkdir()
    (fake_pkg / "ct-phantom-64.safetensors").write_bytes(b"shipped")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", fake_pkg)
    argv = ["--name", "ct-phantom-64", "--data", "ct", "--out", str(tmp_path), "--weights-dir", str(fake_pkg), *TINY]
    assert train_prior_main(argv) == 2                              # refused before training
    err = capsys.readouterr().err
    assert "overwrite-shipped" in err and not (tmp_path / "ct-phantom-64" / "ckpt").exists()
    assert (fake_pkg / "ct-phantom-64.safetensors").read_bytes() == b"shipped"
    assert train_prior_main(argv + ["--overwrite-shipped"]) == 0   # explicit: replaced
    assert (fake_pkg / "ct-phantom-64.safetensors").read_bytes() != b"shipped"
