"""`invdiff reconstruct --calibration`: the calibrated std next to the raw one, labelled; clear errors up front."""
import json

import numpy as np
import pytest

from invdiff.cli import main
from invdiff.datasets import ct_phantoms
from invdiff.priors import available as priors_available
from invdiff.priors.calibration import known_pairs, std_scale

pytestmark = pytest.mark.skipif("ct-phantom-64" not in priors_available() or std_scale("ct-phantom-64", "dds") is None,
                                reason="shipped prior or its calibration entry not installed")


def _run(args, capsys):
    rc = main(["reconstruct", *map(str, args)])
    return rc, capsys.readouterr().err


def test_calibrated_std_written_and_labelled(tmp_path, capsys):
    np.save(tmp_path / "img.npy", ct_phantoms([100], 32)[0, 0].numpy())
    out = tmp_path / "out"
    rc, err = _run([tmp_path / "img.npy", "--task", "ct", "--solver", "dds", "--prior", "ct-phantom-64", "--out", out,
                    "--no-progress", "--calibration", "--set", "n_samples=2", "--set", "dds.num_steps=3"], capsys)
    assert rc == 0, err
    raw, cal = np.load(out / "img_std.npy"), np.load(out / "img_std_calibrated.npy")
    c = std_scale("ct-phantom-64", "dds")["std_scale"]
    assert raw.shape == cal.shape and raw.max() > 0
    np.testing.assert_allclose(cal, c * raw, rtol=1e-5)
    rec = json.loads((out / "records" / "img.npy.json").read_text())
    assert rec["calibration"]["std_scale"] == pytest.approx(c) and "calibrated" in rec["calibration"]["note"]


@pytest.mark.parametrize("args,words", [
    (["--solver", "dds", "--prior", "ct-phantom-64", "--calibration"], "n_samples"),            # no std map
    (["--solver", "tv", "--calibration"], "argument '--calibration'"),                           # no fitted scale
])
def test_calibration_errors_before_work(tmp_path, capsys, args, words):
    np.save(tmp_path / "img.npy", ct_phantoms([100], 32)[0, 0].numpy())
    rc, err = _run([tmp_path / "img.npy", "--task", "ct", "--out", tmp_path / "out", *args], capsys)
    assert rc == 2 and words in err
    assert not (tmp_path / "out").exists()


def test_table_lists_pairs():
    assert "ct-phantom-64/dds" in known_pairs()
