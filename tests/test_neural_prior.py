"""NeuralPrior: EDM preconditioning, self-describing safetensors files, loader errors, registry, shipped weights."""
import json
import sys
import types

import pytest
import torch

from invdiff.priors import available, load
from invdiff.priors.networks import CompactUNet
from invdiff.priors.neural import NeuralPrior, edm_coefficients, read_checkpoint


def _prior(channels=1, resolution=None, seed=0, sigma_data=0.2, shift=0.15):
    torch.manual_seed(seed)
    net = CompactUNet(in_channels=channels, base_channels=8, channel_mult=(1, 2), emb_dim=16)
    with torch.no_grad():  # zero-initialised output layers would make every comparison trivially pass
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return NeuralPrior(net, sigma_data=sigma_data, data_shift=shift, channels=channels, resolution=resolution,
                       name="tiny", info={"note": "test"}).eval()


def test_save_load_roundtrip_identical(tmp_path, gen):
    p = _prior(channels=2)
    path = p.save(tmp_path / "p.safetensors")
    q = NeuralPrior.load(path)
    x = torch.randn(3, 2, 16, 16, generator=gen)
    s = torch.tensor([0.01, 0.3, 2.0])
    with torch.no_grad():
        a, b = p(x, s), q(x, s)
    assert not torch.allclose(a, x, atol=1e-3)  # the network actually contributes
    assert torch.equal(a, b)
    assert (q.channels, q.sigma_data, q.data_shift, q.name) == (2, p.sigma_data, p.data_shift, "tiny")
    assert q.net_config == p.net_config and q.info == {"note": "test"}


def test_fp16_storage_is_close(tmp_path, gen):
    p = _prior()
    q = NeuralPrior.load(p.save(tmp_path / "h.safetensors", dtype=torch.float16))
    x = torch.rand(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        assert (p(x, 0.1) - q(x, 0.1)).abs().max() < 1e-2


def test_header_is_json_describing_architecture(tmp_path):
    meta, tensors = read_checkpoint(_prior().save(tmp_path / "p.safetensors"))
    assert meta["arch"] == "CompactUNet" and meta["precond"]["type"] == "edm"
    assert meta["net_config"]["base_channels"] == 8 and "conv_in.weight" in tensors


def _rewrite(path, tensors, metadata):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("defect", ["truncated", "garbage", "missing_key", "extra_key", "no_header", "bad_json",
                                    "wrong_shape", "not_a_file"])
def test_defective_files_give_one_clear_error(tmp_path, defect):
    path = _prior().save(tmp_path / "p.safetensors")
    raw = path.read_bytes()
    meta, tensors = read_checkpoint(path)
    bad = tmp_path / "bad.safetensors"
    if defect == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif defect == "garbage":
        bad.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif defect == "missing_key":
        tensors.pop("conv_in.weight")
        _rewrite(bad, tensors, {"invdiff": json.dumps(meta)})
    elif defect == "extra_key":
        tensors["surprise"] = torch.zeros(1)
        _rewrite(bad, tensors, {"invdiff": json.dumps(meta)})
    elif defect == "no_header":
        _rewrite(bad, tensors, {})
    elif defect == "bad_json":
        _rewrite(bad, tensors, {"invdiff": "{not json"})
    elif defect == "wrong_shape":
        tensors["conv_in.weight"] = torch.zeros(3, 3, 3, 3)
        _rewrite(bad, tensors, {"invdiff": json.dumps(meta)})
    elif defect == "not_a_file":
        bad = tmp_path / "nope.safetensors"
    with pytest.raises(ValueError, match="argument 'path'") as e:
        NeuralPrior.load(bad)
    assert str(bad) in str(e.value)
    if defect in ("missing_key", "extra_key"):
        assert ("conv_in.weight" if defect == "missing_key" else "surprise") in str(e.value)


def test_check_input_channels_and_resolution(gen):
    p = _prior(channels=2, resolution=(16, 16))
    with pytest.raises(ValueError, match="2 channel"):
        p(torch.zeros(1, 1, 16, 16), 0.1)
    with pytest.raises(ValueError, match="spatial size"):
        p(torch.zeros(1, 2, 32, 32), 0.1)
    with pytest.raises(ValueError, match="4-D"):
        p(torch.zeros(2, 16, 16), 0.1)
    with pytest.raises(TypeError):
        p([[0.0]], 0.1)


def test_fully_convolutional_any_size(gen):
    p = _prior(resolution=None)
    for shape in [(1, 1, 24, 40), (2, 1, 15, 17)]:
        x = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            assert p(x, 0.2).shape == x.shape


def test_edm_preconditioning_limits(gen):
    sd = 0.2
    s = torch.tensor([1e-8, 1e-3, sd, 1e3])
    c_skip, c_out, c_in, c_noise = edm_coefficients(s, sd)
    # Karras et al. 2022, Table 1: c_skip = sd^2/(s^2+sd^2), c_out = s*sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2)
    assert torch.allclose(c_skip, sd ** 2 / (s ** 2 + sd ** 2))
    assert torch.allclose(c_out, s * sd / (s ** 2 + sd ** 2).sqrt())
    assert torch.allclose(c_in * (s ** 2 + sd ** 2).sqrt(), torch.ones(4))
    assert abs(float(c_skip[0]) - 1) < 1e-12 and float(c_out[0]) < 1e-7
    assert torch.allclose(c_noise, s.log() / 4)
    # the denoiser returns x itself as sigma -> 0, whatever the weights
    p = _prior()
    x = torch.rand(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        assert (p(x, 1e-6) - x).abs().max() < 1e-5
        assert (p(x, 0.5) - x).abs().max() > 1e-3


def test_conditional_network_needs_cond(gen):
    net = CompactUNet(in_channels=1, cond_channels=1, base_channels=8, channel_mult=(1, 2), emb_dim=16)
    p = NeuralPrior(net, sigma_data=0.2, channels=1)
    x = torch.rand(2, 1, 16, 16, generator=gen)
    assert p.denoise(x, 0.1, cond=x).shape == x.shape
    with pytest.raises(ValueError, match="cond"):
        p.denoise(x, 0.1)


# --------------------------------------------------------------------------------------- registry
def test_registry_unknown_name_lists_available():
    with pytest.raises(ValueError) as e:
        load("no-such-prior")
    assert "no-such-prior" in str(e.value) and str(available()) in str(e.value)
    with pytest.raises(TypeError):
        load(3)


def test_registry_loads_invdiff_path_and_delegates_other_formats(tmp_path, monkeypatch, gen):
    path = _prior().save(tmp_path / "mine.safetensors")
    q = load(str(path))
    assert isinstance(q, NeuralPrior)
    other = tmp_path / "foreign.pt"
    other.write_bytes(b"whatever")
    calls = []
    fake = types.ModuleType("invdiff.priors.loaders")
    fake.load_checkpoint = lambda p, *, device, **kw: calls.append((str(p), device, kw)) or "delegated"
    monkeypatch.setitem(sys.modules, "invdiff.priors.loaders", fake)
    assert load(other, device="cpu", arch="x") == "delegated"
    assert calls == [(str(other), "cpu", {"arch": "x"})]


def test_available_lists_only_installed(monkeypatch, tmp_path):
    import invdiff.priors.registry as R
    monkeypatch.setattr(R, "WEIGHTS_DIR", tmp_path)
    assert R.available() == []
    _prior().save(tmp_path / "ct-phantom-64.safetensors")
    assert R.available() == ["ct-phantom-64"]


# --------------------------------------------------------------------------------------- shipped weights
@pytest.mark.parametrize("name", ["ct-phantom-64", "mri-brainphantom-64"])
def test_shipped_prior_denoises_heldout_phantoms(name, gen):
    if name not in available():
        pytest.skip(f"{name} weights not installed yet")
    from invdiff.datasets import ct_phantoms, mri_phantoms, split_seeds
    from invdiff.training import psnr

    p = load(name)
    assert isinstance(p, NeuralPrior) and p.name == name
    x = (ct_phantoms if p.channels == 1 else mri_phantoms)(split_seeds("heldout", 8), 64)
    y = x + 0.1 * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        gain = float((psnr(p(y, 0.1), x) - psnr(y, x)).mean())
    assert gain > 5.0, f"{name}: only {gain:.2f} dB better than the noisy input at sigma=0.1"
    with pytest.raises(ValueError, match="channel"):
        p(torch.zeros(1, 3 - p.channels, 64, 64), 0.1)
