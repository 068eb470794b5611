"""Native 3D priors: ellipsoid volume generator, CompactUNet(dims=3), NeuralPrior with spatial_dims=3, training."""
import json
import warnings

import pytest
import torch

from invdiff.datasets import HELDOUT_SEED_START, split_seeds
from invdiff.datasets.phantoms3d import VolumeStream, ct_volumes, shepp_logan_3d
from invdiff.priors import load
from invdiff.priors.networks import CompactUNet
from invdiff.priors.neural import NeuralPrior
from invdiff.training import edm_loss, export, make_config, read_train_checkpoint, resolve_config, train, \
    train_prior_main

TINY3D = dict(data="ct3d", dims=3, size=16, base_channels=8, channel_mult=(1, 2), emb_dim=16, batch_size=4,
              warmup=1, log_every=5, ckpt_every=20, keep_every=0, progress=False)


# --------------------------------------------------------------------------------------- volumes
def test_volumes_deterministic_per_seed_and_in_range():
    a = ct_volumes([5, 6, 7], 16)
    b = ct_volumes([7, 6, 5], 16)
    assert a.shape == (3, 1, 16, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b.flip(0))  # each volume depends on its own seed only
    assert not torch.equal(a[0], a[1])
    x = ct_volumes(range(6), 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # CT-like: a body with air around it, many grey levels inside, structure along every axis
    assert all(float(v[0, 16, 16, 16]) > 0.05 and float(v[0, :, 0, 0].max()) == 0.0 for v in x)
    assert all(len(torch.unique((v * 1000).round())) > 200 for v in x)
    for dim in (2, 3, 4):
        assert float(x.diff(dim=dim).abs().mean()) > 1e-3


def test_volume_stream_split_and_parts():
    s = VolumeStream("ct3d", 8)
    assert torch.equal(s(2, 3), ct_volumes(range(6, 9), 8))
    assert torch.equal(torch.cat([s.part(2, 3, 0, 1), s.part(2, 3, 1, 3)]), s(2, 3))
    assert min(split_seeds("heldout", 4)) >= HELDOUT_SEED_START  # the 2D phantoms' split, shared
    with pytest.raises(ValueError, match="HELDOUT"):
        s(HELDOUT_SEED_START // 2, 2)
    with pytest.raises(ValueError, match="kind"):
        VolumeStream("mri3d", 8)
    sl = shepp_logan_3d(20)
    assert sl.shape == (1, 1, 20, 20, 20) and float(sl.max()) == 1.0 and float(sl.min()) >= 0


# --------------------------------------------------------------------------------------- network and prior
def _prior3d(resolution=None, seed=0):
    torch.manual_seed(seed)
    net = CompactUNet(in_channels=1, base_channels=8, channel_mult=(1, 2), emb_dim=16, dims=3)
    with torch.no_grad():  # zero-initialised output layers would make every comparison trivially pass
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return NeuralPrior(net, sigma_data=0.15, data_shift=0.07, channels=1, resolution=resolution, name="vol").eval()


def test_network_3d_shapes_padding_and_conv3d(gen):
    net = CompactUNet(in_channels=2, cond_channels=1, base_channels=8, channel_mult=(1, 2, 2), emb_dim=16, dims=3,
                      attn_levels=[2])
    assert net.config["dims"] == 3 and net.downsampling_factor == 4
    assert any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    x = torch.randn(2, 2, 9, 10, 7, generator=gen)  # not multiples of 4: padded and cropped back
    assert net(x, torch.zeros(2), cond=x[:, :1]).shape == x.shape
    with pytest.raises(ValueError, match="5-D"):
        net(torch.zeros(2, 2, 8, 8), torch.zeros(2), cond=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="cond"):
        net(x, torch.zeros(2), cond=torch.zeros(2, 1, 9, 10, 8))
    with pytest.raises(ValueError, match="dims"):
        CompactUNet(dims=4)
    assert "dims" not in CompactUNet(base_channels=8, channel_mult=(1, 2)).config  # 2D configs unchanged


def test_neural_prior_3d_interface_and_roundtrip(tmp_path, gen):
    p = _prior3d()
    assert p.spatial_dims == 3 and p.metadata()["spatial_dims"] == 3
    x = torch.rand(2, 1, 12, 16, 8, generator=gen)
    s = torch.tensor([0.05, 0.5])
    with torch.no_grad():
        a = p(x, s)
        assert a.shape == x.shape and not torch.allclose(a, x, atol=1e-3)
        assert (p(x, 1e-6) - x).abs().max() < 1e-5  # D(x, sigma -> 0) = x (EDM c_skip -> 1)
    q = NeuralPrior.load(p.save(tmp_path / "v.safetensors"))
    assert q.spatial_dims == 3 and q.net_config == p.net_config
    with torch.no_grad():
        assert torch.equal(q(x, s), a)
    with pytest.raises(ValueError, match="5-D"):
        p(torch.zeros(1, 1, 16, 16), 0.1)
    with pytest.raises(ValueError, match="channel"):
        p(torch.zeros(1, 2, 8, 8, 8), 0.1)
    r = _prior3d(resolution=(8, 16, 16))
    with pytest.raises(ValueError, match="spatial size"):
        r(torch.zeros(1, 1, 16, 16, 16), 0.1)
    with torch.no_grad():
        assert r(torch.zeros(1, 1, 8, 16, 16), 0.1).shape == (1, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="resolution"):
        _prior3d(resolution=(16, 16))
    with pytest.raises(ValueError, match="spatial_dims"):
        NeuralPrior(CompactUNet(base_channels=8, channel_mult=(1, 2), dims=3), sigma_data=0.2, channels=1, spatial_dims=2)


def test_header_dims_and_old_2d_files(tmp_path):
    from safetensors.torch import save_file

    from invdiff.priors.neural import read_checkpoint

    # a 2D file written before spatial_dims existed (no such key) is a 2D prior
    torch.manual_seed(0)
    p2 = NeuralPrior(CompactUNet(base_channels=8, channel_mult=(1, 2), emb_dim=16), sigma_data=0.2, channels=1)
    meta, tensors = read_checkpoint(p2.save(tmp_path / "p2.safetensors"))
    meta.pop("spatial_dims")
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"invdiff": json.dumps(meta)})
    assert NeuralPrior.load(tmp_path / "old.safetensors").spatial_dims == 2
    # a header that contradicts its network is one clear error naming the file
    meta3, tensors3 = read_checkpoint(_prior3d().save(tmp_path / "v.safetensors"))
    meta3["spatial_dims"] = 2
    save_file(tensors3, str(tmp_path / "bad.safetensors"), metadata={"invdiff": json.dumps(meta3)})
    with pytest.raises(ValueError, match="bad.safetensors") as e:
        NeuralPrior.load(tmp_path / "bad.safetensors")
    assert "spatial_dims" in str(e.value)


# --------------------------------------------------------------------------------------- training
def test_tiny_3d_prior_trains_and_reloads_identically(tmp_path):
    cfg = make_config({**TINY3D, "name": "v3", "out": str(tmp_path), "steps": 40, "lr": 3e-3, "ema_decay": 0.0})
    x0 = ct_volumes(split_seeds("heldout", 4), 16).repeat(4, 1, 1, 1, 1)  # never seen in training
    sigma = torch.tensor([0.02, 0.1, 0.3, 1.0]).repeat_interleave(4)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    from invdiff.training import build_prior, make_source
    cfg, channels = resolve_config(cfg, make_source(cfg))
    with torch.no_grad():
        before = float(edm_loss(build_prior(cfg, channels), x0, sigma, noise))  # zero output layer: c_skip only
    state = train(cfg)
    with torch.no_grad():
        after = float(edm_loss(state.model.eval(), x0, sigma, noise))
    assert state.step == 40 and state.model.spatial_dims == 3
    print(f"3D EDM loss on held-out volumes: {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before, (before, after)  # measured: 1.06 -> 0.58
    meta, tensors = read_train_checkpoint(tmp_path / "v3" / "ckpt" / "latest.safetensors")
    assert meta["config"]["dims"] == 3 and meta["prior"]["spatial_dims"] == 3
    assert tensors["model.conv_in.weight"].dim() == 5
    # export (fp32) -> load: identical outputs to the trained EMA prior; the model card describes a 3D prior
    res = export(tmp_path / "v3" / "ckpt" / "latest.safetensors", weights_dir=tmp_path / "w", dtype="float32",
                 eval_images=2, sigmas=(0.1,), sample_steps=2, n_samples=2)
    assert res["step"] == 40 and res["eval"]["rows"][0]["prior_psnr"] > res["eval"]["rows"][0]["noisy_psnr"]
    q = load(str(tmp_path / "w" / "v3.safetensors"))
    assert isinstance(q, NeuralPrior) and q.spatial_dims == 3 and q.trained_resolution == (16, 16, 16)
    y = x0[:4] + 0.1 * noise[:4]
    ema = state.ema.eval().to(memory_format=torch.contiguous_format)  # trained channels-last; same layout as q
    with torch.no_grad():
        assert torch.equal(q(y, 0.1), ema(y, 0.1))
    card = (tmp_path / "w" / "v3.md").read_text()
    assert "16x16x16" in card and "--dims 3" in card and "ct3d" in card and "spatial_dims = 3" in card
    assert (tmp_path / "w" / "v3_samples.png").is_file()


def test_resume_3d_equals_uninterrupted(tmp_path):
    kw = {**TINY3D, "name": "r3", "ckpt_every": 3, "dropout": 0.1, "sigma_data": 0.14, "data_shift": 0.09}
    straight = train(make_config({**kw, "out": str(tmp_path / "a"), "steps": 6}))
    train(make_config({**kw, "out": str(tmp_path / "b"), "steps": 3}))
    resumed = train(make_config({**kw, "out": str(tmp_path / "b"), "steps": 6}))
    for (ka, va), (kb, vb) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for pa, pb in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(straight.opt.state[pa]["exp_avg"], resumed.opt.state[pb]["exp_avg"])
    # resuming a 3D run as 2D is refused with one clear error
    with pytest.raises(ValueError, match="dims"):
        train(make_config({**kw, "out": str(tmp_path / "b"), "steps": 8, "dims": 2, "data": "ct"}))


def test_cli_3d_flags_and_errors(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--steps", "2", "--export", "never"]
    assert train_prior_main(base + ["--dims", "3", "--data", "ct"]) == 2
    err = capsys.readouterr().err
    assert "ct3d" in err and err.count("error") == 1
    assert train_prior_main(base + ["--data", "ct3d"]) == 2
    assert "--dims 3" in capsys.readouterr().err
    assert train_prior_main(base + ["--dims", "4"]) == 2
    assert "dims" in capsys.readouterr().err
    assert train_prior_main(base + ["--dims", "3", "--data", "ct3d", "--size", "18", "--channel-mult", "1,2,4"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    argv = ["--name", "c3", "--data", "ct3d", "--dims", "3", "--size", "8", "--base-channels", "8",
            "--channel-mult", "1,2", "--emb-dim", "16", "--batch-size", "2", "--progress", "false"] + base
    assert train_prior_main(argv) == 0
    assert json.loads((tmp_path / "c3" / "config.json").read_text())["dims"] == 3


def test_ct_slab_family_deterministic_any_depth_and_z_extended():
    """The second 3D CT family (evaluation only): a pure function of (seed, depth, size), in [0, 1], any depth, and
    not constant along z (structures start and end between slices)."""
    from invdiff.datasets.phantoms3d import ct_slab

    a, b = ct_slab(1000000300, 12, 32), ct_slab(1000000300, 12, 32)
    assert a.shape == (1, 1, 12, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and float(a.mean()) > 0.05
    assert not torch.equal(a, ct_slab(1000000301, 12, 32))
    assert float((a[:, :, 1:] - a[:, :, :-1]).abs().max()) > 0.05


def test_shipped_native_3d_prior_denoises_heldout_volumes_and_serves_the_volume_solvers(gen):
    """The shipped native 3D CT prior: a 32^3 patch prior validated at 32x64x64 (no warning there, an error below
    one patch under strict), a real denoiser of held-out volumes (seeds never seen in training), and a prior every
    volume path takes: on 16-view CT of a held-out 32x64x64 volume DDS (native) and DDS 3D (+ z-TV) with 10 steps
    beat FBP clearly; DiffusionMBIR runs with it (its VE predictor-corrector needs 100+ steps to be meaningful)."""
    import invdiff
    from invdiff.metrics import psnr
    from invdiff.operators import CT3D
    from invdiff.priors.base import PriorSizeError, PriorSizeWarning, check_prior_fits

    p = load("ct-ellipsoid3d-patch32")
    assert p.spatial_dims == 3 and p.patch_size == (32, 32, 32) and (32, 64, 64) in p.validated_sizes
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorSizeWarning)
        assert check_prior_fits(p, (1, 32, 64, 64), strict=True) is None
    with pytest.raises(PriorSizeError, match="patch"):
        check_prior_fits(p, (1, 16, 64, 64), strict=True)
    x = ct_volumes(split_seeds("heldout", 2, start=960), 64)[:, :, 16:48]
    noisy = x + 0.1 * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        gain = float(psnr(p(noisy, 0.1), x).mean() - psnr(noisy, x).mean())
    assert gain > 12.0, f"denoising gain {gain:.2f} dB"                     # measured: 16.2 dB
    op = CT3D((1, 32, 64, 64), n_views=16, sigma=0.01, rng=gen)
    y = op(x[:1])
    fbp = float(psnr(op.fbp(y), x[:1]))
    from invdiff.bench.harness import option_default
    from invdiff.priors.lift import lift

    lifted = option_default("dds", "gamma", op, lift(load("ct-phantom-64")))   # the automatic 0.005 / sigma^2
    assert option_default("dds", "gamma", op, p) == pytest.approx(lifted / 3)  # measured row for native 3D priors
    for solver, margin in (("dds", 4.0), ("dds3d", 6.0)):                  # measured: +7.0 / +9.7 dB
        rec = invdiff.solve(y, op, p, solver=solver, num_steps=10, seed=0)
        got = float(psnr(rec.mean, x[:1]))
        assert got > fbp + margin, f"{solver}: {got:.2f} dB vs FBP {fbp:.2f}"
    with pytest.warns(RuntimeWarning, match="diverged"):                        # CT below the 'fast' preset
        rec = invdiff.solve(y, op, p, solver="diffusion-mbir", num_steps=2, seed=0)   # takes the native prior
    assert rec.mean.shape == x[:1].shape and rec.nfe == 4
