"""Patch-trained priors (issue 11 item 1): random crops with coordinate channels, whole-image inference
fully convolutional or tiled with a random grid offset per call."""
import pytest
import torch
from torch import nn

from invdiff.priors import NeuralPrior
from invdiff.priors.networks import CompactUNet, coordinate_channels
from invdiff.training import PatchSource, make_config, read_train_checkpoint, train
from invdiff.datasets import PhantomStream

TINY = dict(base_channels=8, channel_mult=(1, 2), emb_dim=16, batch_size=4, warmup=2, log_every=1, ckpt_every=2,
            keep_every=0, progress=False)


class PointwiseNet(nn.Module):
    """F(x, c, pos) = x * (1 + pos_0) + 2 pos_1: no spatial context, so tiles must reproduce the whole image."""
    dims, pos_channels = 2, 2

    def forward(self, x, c_noise, cond=None, pos=None):
        if pos is None:
            pos = coordinate_channels(x.shape[2:], batch=x.shape[0])
        return x * (1 + pos[:, :1]) + 2 * pos[:, 1:2]


def _pointwise_prior(**kw):
    return NeuralPrior(PointwiseNet(), sigma_data=0.3, channels=1, net_config={"pos_channels": 2},
                       patch_size=(8, 8), **kw)


def test_coordinate_channels_of_a_crop_are_those_of_the_whole_image():
    whole = coordinate_channels((12, 10))
    offs = torch.tensor([[3, 2], [0, 5]])
    crops = coordinate_channels((12, 10), offs, (6, 4))
    for i, (r, c) in enumerate(offs.tolist()):
        assert torch.equal(crops[i], whole[0, :, r:r + 6, c:c + 4])
    assert float(whole.min()) > -1 and float(whole.max()) < 1


@pytest.mark.parametrize("size", [(8, 8), (21, 30), (32, 17)])
def test_tiled_equals_whole_image_for_a_context_free_network(size):
    """Every pixel is denoised exactly once, by a window that holds it, with the window's true coordinates."""
    p = _pointwise_prior()
    x = torch.randn(3, 1, *size)
    ref = p.denoise(x, 0.2)                       # conv: whole-image coordinates
    p.set_inference("tiled", seed=1)
    for _ in range(4):                            # several random offsets
        assert torch.allclose(p.denoise(x, 0.2), ref, atol=1e-6)


def test_tiled_random_offsets_are_deterministic_given_the_seed():
    torch.manual_seed(0)
    net = CompactUNet(1, base_channels=8, channel_mult=(1, 2), emb_dim=16, pos_channels=2)
    for prm in net.parameters():                  # zero-initialised output layers: make the network non-trivial
        prm.data.normal_(0, 0.2)
    p = NeuralPrior(net, sigma_data=0.3, channels=1, patch_size=(8, 8)).set_inference("tiled", seed=5)
    x = torch.randn(2, 1, 24, 20)
    with torch.no_grad():
        a1, a2 = p(x, 0.3), p(x, 0.3)
        p.set_inference("tiled", seed=5)
        b1, b2 = p(x, 0.3), p(x, 0.3)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)                # the grid moved between calls: no fixed seam
    with pytest.raises(ValueError, match="inference"):
        p.set_inference("padded")


def test_patch_source_crops_positions_and_rows():
    base = PhantomStream("ct", 32)
    src = PatchSource(base, 16, positional=True, seed=3)
    b = src(5, 4)
    assert b["x0"].shape == (4, 1, 16, 16) and b["pos"].shape == (4, 2, 16, 16)
    full = base(5, 4)
    offs = src.offsets(5, 4, (32, 32))
    for i, (r, c) in enumerate(offs.tolist()):
        assert torch.equal(b["x0"][i], full[i, :, r:r + 16, c:c + 16])
    part = src.part(5, 4, 1, 3)                   # a data-parallel rank's rows
    assert torch.equal(part["x0"], b["x0"][1:3]) and torch.equal(part["pos"], b["pos"][1:3])


def test_patch_training_records_patch_metadata_and_resumes_exactly(tmp_path):
    cfg = make_config(dict(TINY, name="p", data="ct", size=32, patch_size=16, positional=True, inference="tiled",
                           steps=4, out=str(tmp_path)))
    st = train(cfg)
    meta, _ = read_train_checkpoint(tmp_path / "p" / "ckpt" / "latest.safetensors")
    assert meta["prior"]["patch_size"] == [16, 16] and meta["prior"]["trained_resolution"] == [32, 32]
    assert meta["prior"]["net_config"]["pos_channels"] == 2 and meta["prior"]["inference"] == "tiled"
    # interrupted at step 2 and resumed = uninterrupted
    cfg2 = make_config(dict(TINY, name="q", data="ct", size=32, patch_size=16, positional=True, steps=2,
                            out=str(tmp_path)))
    train(cfg2)
    cfg2.steps = 4
    st2 = train(cfg2)
    for a, b in zip(st.ema.parameters(), st2.ema.parameters()):
        assert torch.equal(a, b)


def test_warm_start_adds_zero_positional_inputs(tmp_path):
    base = dict(TINY, data="ct", size=16, out=str(tmp_path))
    train(make_config(dict(base, name="w", steps=2)))
    ck = str(tmp_path / "w" / "ckpt" / "latest.safetensors")
    cfg = make_config(dict(base, name="wp", steps=3, size=32, patch_size=16, positional=True, init_from=ck,
                           lr=1e-12, warmup=0))
    st = train(cfg)
    meta, t = read_train_checkpoint(ck)
    w_old, w_new = t["ema.conv_in.weight"], st.ema.net.conv_in.weight
    assert w_new.shape[1] == w_old.shape[1] + 2
    assert torch.allclose(w_new[:, :1], w_old, atol=1e-6) and float(w_new[:, 1:].abs().max()) < 1e-6


@pytest.mark.parametrize("size", [(24, 16), (16, 16)])
def test_square_coordinate_frame_gives_a_non_square_image_the_coordinates_of_its_central_square(size, tmp_path):
    """coord_frame="square": the centred min(H, W) square of a 640x368-like image gets exactly the coordinates a
    square image of that side has (conv and tiled); square images are unchanged; the choice survives a save/load."""
    H, W = size
    s = min(size)
    sq = coordinate_channels(size, frame=(s, s))
    top = (H - s) // 2
    assert torch.allclose(sq[0, :, top:top + s, :], coordinate_channels((s, s))[0])
    p = _pointwise_prior(coord_frame="square")
    x = torch.randn(2, 1, *size)
    want = p.precond(x, torch.full((2,), 0.2), None, sq)              # the network given these coordinates
    assert torch.allclose(p.denoise(x, 0.2), want, atol=1e-5)
    plain = _pointwise_prior().denoise(x, 0.2)
    assert torch.allclose(plain, want, atol=1e-5) == (H == W)
    p.set_inference("tiled", seed=3)
    assert torch.allclose(p.denoise(x, 0.2), want, atol=1e-5)
    net = CompactUNet(1, base_channels=8, channel_mult=(1, 2), emb_dim=16, pos_channels=2)
    NeuralPrior(net, sigma_data=0.3, channels=1, patch_size=(8, 8), coord_frame="square").save(tmp_path / "p.st")
    assert NeuralPrior.load(tmp_path / "p.st").coord_frame == "square"
    with pytest.raises(ValueError, match="coord_frame"):
        _pointwise_prior(coord_frame="fov")
