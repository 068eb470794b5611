"""Training machinery (EDM loss, EMA, resumable checkpoints, CLI, export, sampler) and phantom generators."""
import json
import math

import numpy as np
import pytest
import torch

from invdiff.datasets import (HELDOUT_SEED_START, PhantomStream, ct_phantoms, mri_phantoms, shepp_logan,
                              split_seeds)
from invdiff.priors.base import Prior
from invdiff.training import (TensorSource, edm_heun_sampler, edm_loss, export, make_config, read_train_checkpoint,
                             train, train_prior_main)

TINY = dict(size=16, base_channels=8, channel_mult=(1, 2), emb_dim=16, batch_size=4, warmup=5, log_every=2,
            ckpt_every=5, keep_every=0, progress=False, channels_last=True)


# --------------------------------------------------------------------------------------- phantoms
@pytest.mark.parametrize("gen_fn", [ct_phantoms, mri_phantoms])
def test_phantoms_deterministic_per_seed(gen_fn):
    a = gen_fn([5, 6, 7], 32)
    b = gen_fn([7, 6, 5], 32)
    assert torch.equal(a, b.flip(0))  # each image depends on its own seed only
    assert not torch.equal(a[0], a[1])
    assert gen_fn(4, 24).shape[0] == 4 and gen_fn(4, 24).shape[-1] == 24


def test_ct_phantoms_range_and_texture():
    x = ct_phantoms(range(16), 64)
    assert x.shape == (16, 1, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # not piecewise constant: many distinct grey levels inside each phantom
    assert all(len(torch.unique((img * 1000).round())) > 100 for img in x)


def test_mri_phantoms_complex_normalised():
    z = mri_phantoms(range(8), 64)
    assert z.shape == (8, 2, 64, 64)
    mag = z.norm(dim=1)
    assert torch.allclose(mag.flatten(1).max(1).values, torch.ones(8), atol=1e-4)
    phase = torch.atan2(z[:, 1], z[:, 0])[mag > 0.2]
    assert float(phase.std()) > 0.3  # a real, varying phase, not a real-valued image


def test_heldout_split_is_disjoint_from_training_stream():
    held = split_seeds("heldout", 10)
    assert min(held) >= HELDOUT_SEED_START and split_seeds("train", 3) == [0, 1, 2]
    s = PhantomStream("ct", 16)
    assert torch.equal(s(2, 4), ct_phantoms(range(8, 12), 16))
    with pytest.raises(ValueError, match="HELDOUT"):
        s(HELDOUT_SEED_START // 4, 4)
    with pytest.raises(ValueError, match="split"):
        split_seeds("test", 3)


def test_shepp_logan_any_size():
    for n in (37, 64):
        x = shepp_logan(n)
        assert x.shape == (1, 1, n, n) and float(x.max()) == 1.0 and float(x.min()) >= 0
    z = shepp_logan(48, complex=True)
    assert z.shape == (1, 2, 48, 48) and abs(float(z.norm(dim=1).max()) - 1) < 1e-5


# --------------------------------------------------------------------------------------- training
def _cfg(tmp_path, **kw):
    return make_config({**TINY, "out": str(tmp_path), **kw})


def test_loss_decreases_on_tiny_overfit(tmp_path):
    data = ct_phantoms(range(4), 16)
    cfg = _cfg(tmp_path, name="overfit", steps=50, lr=3e-3, ema_decay=0.0, warmup=1)
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.5, 1.0]).repeat_interleave(4)
    x0 = data.repeat(6, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=g)

    from invdiff.training import build_prior, resolve_config
    cfg, _ = resolve_config(cfg, TensorSource(data))
    with torch.no_grad():
        before = float(edm_loss(build_prior(cfg, 1), x0, sigma, noise))  # zero-initialised output: the c_skip-only loss
    state = train(cfg, TensorSource(data))
    with torch.no_grad():
        after = float(edm_loss(state.model.eval(), x0, sigma, noise))
    assert after < 0.8 * before, (before, after)  # measured: 1.03 -> 0.63


def _states_equal(a, b, tol=1e-6):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and (va - vb).abs().max() <= tol, ka
    for (ka, va), (kb, vb) in zip(a.ema.state_dict().items(), b.ema.state_dict().items()):
        assert ka == kb and (va - vb).abs().max() <= tol, ka
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        sa, sb = a.opt.state[pa], b.opt.state[pb]
        assert float(sa["step"]) == float(sb["step"])
        assert (sa["exp_avg"] - sb["exp_avg"]).abs().max() <= tol
        assert (sa["exp_avg_sq"] - sb["exp_avg_sq"]).abs().max() <= tol


def test_resume_equals_uninterrupted(tmp_path):
    straight = train(_cfg(tmp_path / "a", name="r", data="mri", steps=20, dropout=0.1))
    train(_cfg(tmp_path / "b", name="r", data="mri", steps=10, dropout=0.1))
    resumed = train(_cfg(tmp_path / "b", name="r", data="mri", steps=20, dropout=0.1))
    assert straight.step == resumed.step == 20
    _states_equal(straight, resumed, tol=0.0)  # bitwise: data and noise depend only on (seed, step)
    rows_a = (tmp_path / "a" / "r" / "loss.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "r" / "loss.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 11
    assert [r.split(",")[1] for r in rows_a] == [r.split(",")[1] for r in rows_b]
    assert not list((tmp_path / "b" / "r" / "ckpt").glob("*.tmp"))


def test_checkpoint_is_safetensors_with_json_header(tmp_path):
    train(_cfg(tmp_path, name="c", steps=5))
    meta, tensors = read_train_checkpoint(tmp_path / "c" / "ckpt" / "latest.safetensors")
    assert meta["step"] == 5 and meta["config"]["size"] == 16
    assert {"rng.torch", "model.conv_in.weight", "ema.conv_in.weight", "optim.0.exp_avg"} <= set(tensors)
    cfgjson = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfgjson["sigma_data"] > 0 and cfgjson["p_mean"] == pytest.approx(-1.2 + math.log(cfgjson["sigma_data"] / 0.5), abs=1e-3)
    (tmp_path / "junk.safetensors").write_bytes(b"0" * 50)
    with pytest.raises(ValueError, match="checkpoint"):
        read_train_checkpoint(tmp_path / "junk.safetensors")


def test_conditional_variant_trains(tmp_path):
    data = ct_phantoms(range(4), 16)

    def pairs(step, b):  # (target, measurement-derived image) pairs
        x = TensorSource(data)(step, b)
        return x, x.flip(-1)

    state = train(_cfg(tmp_path, name="cond", steps=3, cond_channels=1), pairs)
    assert state.model.cond_channels == 1 and state.step == 3


# --------------------------------------------------------------------------------------- sampler
class _Gaussian(Prior):
    """Exact denoiser of x0 ~ N(mu, s^2 I): D = mu + s^2/(s^2+sigma^2) (x - mu)."""
    channels, resolution, sigma_data, data_shift = 1, None, 0.3, 0.5

    def denoise(self, x, sigma):
        sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return 0.5 + 0.09 / (0.09 + sig ** 2) * (x - 0.5)


def test_heun_sampler_matches_gaussian_target():
    # the probability-flow ODE maps N(mu, s^2 + sigma_max^2) to N(mu, s^2); Heun's error shrinks with the step count
    errs = []
    for steps in (12, 48):
        x = edm_heun_sampler(_Gaussian(), (64, 1, 16, 16), steps=steps, generator=torch.Generator().manual_seed(0))
        assert abs(float(x.mean()) - 0.5) < 0.01
        errs.append(abs(float(x.std()) - 0.3))
    assert errs[1] < 0.006 and errs[1] < errs[0] / 4, errs


# --------------------------------------------------------------------------------------- CLI and export
def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_prior_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--export", "--steps", "--threads", "--channel-mult", "--cond-channels"):
        assert flag in out
    assert train_prior_main(["--set", "nosuch=1"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert train_prior_main(["--steps", "-3", "--out", str(tmp_path)]) == 2
    assert "steps" in capsys.readouterr().err
    assert train_prior_main(["--config", str(tmp_path / "missing.cfg")]) == 2
    assert train_prior_main(["--data", "imagenet"]) == 2


def test_cli_config_file_overrides_and_export(tmp_path, capsys):
    cfgfile = tmp_path / "run.cfg"
    cfgfile.write_text("# tiny run\nname = cli\nsize = 16\nbase_channels = 8\nchannel_mult = 1,2\nemb_dim = 16\n"
                       "batch_size = 4\nsteps = 99\nprogress = false\n")
    wdir = tmp_path / "weights"
    argv = ["--config", str(cfgfile), "--set", "steps=4", "--out", str(tmp_path), "--weights-dir", str(wdir),
            "--set", "eval_images=4", "--set", "eval_sigmas=0.1", "--set", "sample_steps=3", "--set", "n_samples=4"]
    assert train_prior_main(argv) == 0
    resolved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert resolved["steps"] == 4 and resolved["channel_mult"] == [1, 2] and resolved["base_channels"] == 8
    for suffix in (".safetensors", ".md", "_samples.png", "_loss.csv"):
        assert (wdir / f"cli{suffix}").is_file(), suffix
    card = (wdir / "cli.md").read_text()
    assert "| 0.1 |" in card and "invdiff train-prior --name cli" in card and "--steps 4" in card
    from invdiff.priors import load
    p = load(str(wdir / "cli.safetensors"))
    assert p.channels == 1 and p.info["step"] == 4
    # export can be rerun on any checkpoint on its own
    res = export(tmp_path / "cli" / "ckpt" / "latest.safetensors", weights_dir=tmp_path / "w2", name="again",
                 eval_images=2, sigmas=(0.2,), sample_steps=2, n_samples=1)
    assert res["step"] == 4 and (tmp_path / "w2" / "again.safetensors").is_file()


def test_tensor_and_folder_sources(tmp_path):
    from safetensors.torch import save_file
    from skimage import io

    from invdiff.training import make_source

    x = ct_phantoms(range(5), 16)
    save_file({"images": x}, str(tmp_path / "x.safetensors"))
    src = make_source(_cfg(tmp_path, data=f"tensor:{tmp_path / 'x.safetensors'}"))
    assert torch.equal(src(3, 4), src(3, 4)) and src(3, 4).shape == (4, 1, 16, 16)
    assert all(any(torch.equal(b, xi) for xi in x) for b in src(0, 4))
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        io.imsave(tmp_path / "imgs" / f"{i}.png", (x[i, 0].numpy() * 255).astype(np.uint8), check_contrast=False)
    src = make_source(_cfg(tmp_path, data=f"folder:{tmp_path / 'imgs'}", size=8))
    b = src(0, 2)
    assert b.shape == (2, 1, 8, 8) and float(b.min()) >= 0 and float(b.max()) <= 1
    with pytest.raises(ValueError, match="folder"):
        make_source(_cfg(tmp_path, data=f"folder:{tmp_path / 'nothing'}"))


def test_cli_help_documents_every_flag(capsys):
    import dataclasses

    from invdiff.training.cli import _HELP, TrainConfig

    with pytest.raises(SystemExit) as e:
        train_prior_main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
        assert len(_HELP.get(f.name, "")) > 15, f"{f.name} has no help text"
    for flag in ("--config", "--set", "--export", "--checkpoint", "--fresh", "--dims", "--nproc", "--dist-backend"):
        assert flag in out
    assert "torch.distributed.run" in out and "--data ct3d --dims 3" in out


def test_cli_bad_sizes_and_dims_one_clear_error(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--steps", "2"]
    for extra, needle in ((["--size", "36"], "multiple of 8"), (["--dims", "1"], "dims"),
                          (["--data", "folder:x", "--dims", "3"], "volumes for dims=3"),
                          (["--batch-size", "6", "--nproc", "4"], "multiple of nproc=4")):
        assert train_prior_main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err  # one line, no traceback
    assert not list(tmp_path.iterdir())


def test_init_from_exported_prior_continues_training(tmp_path):
    """Warm start (init_from): a fresh run starts at the exported EMA weights and step count, keeps the
    preconditioning, continues the loss log, and refuses a mismatched architecture or too few steps."""
    wdir = tmp_path / "w"
    first = train(_cfg(tmp_path, name="a", steps=6, ema_decay=0.0))
    export(tmp_path / "a" / "ckpt" / "latest.safetensors", weights_dir=wdir, name="a", dtype="float32",
           eval_images=2, sigmas=(0.2,), sample_steps=2, n_samples=1)
    src = wdir / "a.safetensors"
    with pytest.raises(ValueError, match="steps"):  # steps count on from the source's 6
        train(_cfg(tmp_path, name="b", steps=6, init_from=str(src)))
    state = train(_cfg(tmp_path, name="c", steps=7, init_from=str(src), lr=1e-12, ema_decay=0.0))
    assert state.step == 7 and state.cfg.init_step == 6
    for (k, v), (_, w) in zip(first.ema.net.state_dict().items(), state.model.net.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-9), k  # lr ~ 0: the weights are the exported EMA weights
    assert state.cfg.sigma_data == first.cfg.sigma_data and state.cfg.data_shift == first.cfg.data_shift
    rows = (tmp_path / "c" / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step") and [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6", "7"]
    # resuming the warm-started run keeps init_step; the training checkpoint is also a valid init_from
    resumed = train(_cfg(tmp_path, name="c", steps=9, init_from=str(src), lr=1e-12, ema_decay=0.0))
    assert resumed.step == 9 and resumed.cfg.init_step == 6
    export(tmp_path / "c" / "ckpt" / "latest.safetensors", weights_dir=wdir, name="c", eval_images=2, sigmas=(0.2,),
           sample_steps=2, n_samples=1)
    card = (wdir / "c.md").read_text()
    assert "warm start: steps 1-6" in card and "--init-from" in card and "--name a" in card  # the command chain
    assert [r.split(",")[0] for r in (wdir / "c_loss.csv").read_text().splitlines()[1:]] == ["2", "4", "6", "7", "8", "9"]
    again = train(_cfg(tmp_path, name="d", steps=10, init_from=str(tmp_path / "c" / "ckpt" / "latest.safetensors")))
    assert again.cfg.init_step == 9 and "--init-from" in again.cfg.init_regenerate
    with pytest.raises(ValueError, match="init_from"):
        train(_cfg(tmp_path, name="e", steps=10, init_from=str(src), base_channels=4))
    with pytest.raises(ValueError, match="init_from"):
        train(_cfg(tmp_path, name="f", steps=10, init_from=str(tmp_path / "missing.safetensors")))
