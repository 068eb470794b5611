"""Issue 16 item 8: the demo says plainly, from its own numbers, where a classical method ties or beats DDS, and its
figure shows error maps and the std of the DDS chains."""
import json

from invdiff.cli import main
from invdiff.demo import verdicts


def _row(task, solver, prior, psnr, ssim, nfe=0):
    return {"task": task, "solver": solver, "prior": prior, "PSNR": psnr, "SSIM": ssim, "NFE": nfe,
            "NFE_images": nfe, "seconds": 1.0}


def test_verdicts_follow_the_numbers():
    rows = [_row("ct", "adjoint", "-", 22.0, 0.5), _row("ct", "tv", "-", 30.5, 0.905),
            _row("ct", "dds (mean of 8)", "ct-phantom-64", 30.4, 0.795, 400),        # issue 16's CT numbers
            _row("mri", "l1-wavelet", "-", 30.0, 0.80), _row("mri", "dds (mean of 8)", "m", 33.0, 0.90, 400),
            _row("inp", "tv", "-", 31.0, 0.90), _row("inp", "dds", "c", 29.0, 0.85, 50),
            _row("tie", "tv", "-", 30.0, 0.90), _row("tie", "dds", "c", 30.3, 0.905, 50)]
    v = {s.split(":")[0]: s for s in verdicts(rows)}
    assert v["ct"].startswith("ct: TV ties DDS in PSNR and beats it in SSIM: the diffusion prior brings no gain")
    assert "30.4 dB / SSIM 0.795" in v["ct"] and "30.5 dB / SSIM 0.905" in v["ct"]
    assert v["mri"].startswith("mri: DDS beats l1-wavelet (")
    assert v["inp"].startswith("inp: TV beats DDS: the diffusion prior brings no gain")
    assert v["tie"].startswith("tie: TV ties DDS:")
    rows[2]["PSNR"] = 32.0                                                        # now DDS wins PSNR, loses SSIM
    assert verdicts(rows)[0].startswith("ct: mixed: DDS is better in PSNR, TV in SSIM")


def test_demo_prints_verdict_and_draws_error_and_std_maps(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--set", 'tasks=["ct"]', "--set", "dds_steps=3",
               "--set", "dds_chains=2", "--set", "threads=1"])
    assert rc == 0
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert res["meta"]["verdicts"] == verdicts(res["rows"]) and len(res["meta"]["verdicts"]) == 1
    out = capsys.readouterr().out
    assert "## Verdict" in out and res["meta"]["verdicts"][0] in out
    assert res["meta"]["verdicts"][0] in (tmp_path / "metrics.md").read_text()
    import matplotlib.image

    h, w = matplotlib.image.imread(tmp_path / "demo.png").shape[:2]
    assert h > 0.4 * w               # one task = two rows (images; std + error maps) of four panels (one: ~0.27)
