"""Bad input to operators, masks, kernels and coil maps: one ValueError/TypeError naming the argument."""
import numpy as np
import pytest
import torch

from invdiff.operators import (CT, CT3D, MRI, Blur, CircularBlur, Inpainting, MatrixOperator, MultiCoilMRI, SliceWise,
                               birdcage_maps, box_mask, brush_mask, espirit_maps, gaussian_kernel, half_mask,
                               make_mask, motion_kernel, poisson_disc_mask, random_mask, random_mask_1d, seed_for_file,
                               uniform_kernel)

NAN = float("nan")


def _nan(shape, where=0):
    t = torch.zeros(shape)
    t.view(-1)[where] = NAN
    return t


def _inf(shape):
    t = torch.zeros(shape)
    t.view(-1)[-1] = float("inf")
    return t


_inp = lambda: Inpainting((1, 8, 8), box_mask((8, 8)))                                    # noqa: E731
_mri = lambda: MRI(random_mask_1d((8, 8), 2, 0.25))                                       # noqa: E731
_mc = lambda: MultiCoilMRI(None, birdcage_maps(3, (8, 8)))                                 # noqa: E731
_ct = lambda: CT(8, n_views=4)                                                             # noqa: E731
_blur = lambda: Blur(gaussian_kernel(3, 1.0), (1, 8, 8), padding="valid")                 # noqa: E731
_stack = lambda: SliceWise(_ct(), 3)                                                       # noqa: E731

CASES = {
    # --- shapes / channels / batch of x and y -----------------------------------------------------
    "inpaint-x-wrong-size": (lambda: _inp().A(torch.zeros(1, 1, 8, 9)), ValueError, "'x'.*shape \\(B, 1, 8, 8\\)"),
    "inpaint-x-no-batch": (lambda: _inp().A(torch.zeros(1, 8, 8)), ValueError, "'x'.*batch axis is missing"),
    "inpaint-y-wrong-size": (lambda: _inp().A_adjoint(torch.zeros(2, 3, 8, 8)), ValueError, "'y'.*\\(B, 1, 8, 8\\)"),
    "inpaint-x-nan": (lambda: _inp()(_nan((1, 1, 8, 8))), ValueError, "'x'.*finite.*1 NaN/Inf"),
    "inpaint-y-inf": (lambda: _inp().check_y(_inf((1, 1, 8, 8))), ValueError, "'y'.*finite"),
    "inpaint-x-not-tensor": (lambda: _inp().A(np.zeros((1, 1, 8, 8))), TypeError, "'x'.*torch.Tensor"),
    "per-sample-mask-batch": (lambda: Inpainting((1, 8, 8), torch.ones(3, 1, 8, 8)).A(torch.zeros(2, 1, 8, 8)),
                              ValueError, "'x'.*batch size 3"),
    "blur-x-3-channels": (lambda: _blur().A(torch.zeros(1, 3, 8, 8)), ValueError, "'x'.*\\(B, 1, 8, 8\\)"),
    "blur-valid-y-full-size": (lambda: _blur().A_adjoint(torch.zeros(1, 1, 8, 8)), ValueError, "'y'.*\\(B, 1, 6, 6\\)"),
    "mri-real-1-channel-x": (lambda: _mri().A(torch.zeros(1, 1, 8, 8)), ValueError,
                             "'x'.*2 real channels \\(real, imaginary\\), not 1 channel"),
    "mri-complex-x": (lambda: _mri().A(torch.zeros(1, 8, 8, dtype=torch.complex64)), TypeError,
                      "'x'.*real tensor.*2 real channels"),
    "mri-complex-x-check": (lambda: _mri().check_x(torch.zeros(1, 2, 8, 8, dtype=torch.complex64)), TypeError, "'x'"),
    "mri-y-nan": (lambda: _mri().check_y(_nan((1, 2, 8, 8))), ValueError, "'y'.*NaN"),
    "mri-y-wrong-size": (lambda: _mri().A_adjoint(torch.zeros(1, 2, 8, 9)), ValueError, "'y'"),
    "multicoil-y-wrong-coils": (lambda: _mc().A_adjoint(torch.zeros(1, 2, 4, 8, 8)), ValueError,
                                "'y'.*\\(B, 2, 3, 8, 8\\)"),
    "multicoil-x-1-channel": (lambda: _mc().A(torch.zeros(1, 1, 8, 8)), ValueError, "'x'.*2 real channels"),
    "ct-x-wrong-size": (lambda: _ct().A(torch.zeros(1, 1, 9, 9)), ValueError, "'x'.*\\(B, 1, 8, 8\\)"),
    "ct-y-wrong-views": (lambda: _ct().A_adjoint(torch.zeros(1, 1, 12, 5)), ValueError, "'y'.*\\(B, 1, 12, 4\\)"),
    "ct-fbp-y-nan-shape": (lambda: _ct().fbp(torch.zeros(1, 12, 4)), ValueError, "'y'.*batch axis"),
    "matrix-x-wrong-n": (lambda: MatrixOperator(torch.eye(3)).A(torch.zeros(2, 4)), ValueError, "'x'.*\\(B, 3\\)"),
    "stack-y-wrong-slices": (lambda: _stack().A_adjoint(torch.zeros(1, 1, 5, 12, 4)), ValueError,
                             "'y'.*3 slices along axis 2"),
    "stack-x-wrong-slices": (lambda: _stack().A(torch.zeros(1, 1, 2, 8, 8)), ValueError, "'x'.*3 slices"),
    "stack-fbp-wrong-slices": (lambda: CT3D((1, 3, 8, 8), n_views=4).fbp(torch.zeros(1, 1, 2, 12, 4)), ValueError,
                               "'y'.*3 slices"),
    # --- masks vs image --------------------------------------------------------------------------
    "inpaint-mask-mismatch": (lambda: Inpainting((1, 8, 8), torch.ones(1, 8, 9)), ValueError,
                              "'mask'.*image size \\(8, 8\\)"),
    "inpaint-mask-channels": (lambda: Inpainting((3, 8, 8), torch.ones(2, 8, 8)), ValueError, "'mask'.*1 or 3"),
    "inpaint-mask-not-binary": (lambda: Inpainting((1, 4, 4), torch.full((4, 4), 0.5)), ValueError,
                                "'mask'.*binary"),
    "inpaint-mask-float-prob": (lambda: Inpainting((1, 4, 4), 0.5), TypeError, "'mask'.*torch.Tensor"),
    "inpaint-mask-nan": (lambda: Inpainting((1, 4, 4), _nan((4, 4))), ValueError, "'mask'.*finite"),
    "mri-mask-mismatch": (lambda: MRI(torch.ones(8, 8), (2, 8, 10)), ValueError, "'mask'.*\\(8, 10\\)"),
    "mri-mask-update-mismatch": (lambda: _mri().update(mask=torch.ones(8, 9)), ValueError, "'mask'"),
    "mri-img-size-1-channel": (lambda: MRI(None, (1, 8, 8)), ValueError, "'img_size'.*2 channels"),
    "mri-three-d-on-2d": (lambda: MRI(None, (2, 8, 8), three_d=True), ValueError, "'img_size'.*\\(2, D, H, W\\)"),
    "mri-no-img-size": (lambda: MRI(), ValueError, "'img_size'"),
    "multicoil-real-maps": (lambda: MultiCoilMRI(None, torch.ones(3, 8, 8)), TypeError, "'coil_maps'.*complex"),
    "multicoil-maps-mismatch": (lambda: MultiCoilMRI(None, birdcage_maps(3, (8, 9)), (2, 8, 8)), ValueError,
                                "'coil_maps'"),
    "multicoil-zero-coils": (lambda: MultiCoilMRI(None, 0, (2, 8, 8)), ValueError, "'coil_maps'"),
    # --- MRI masks ------------------------------------------------------------------------------
    "acceleration-zero": (lambda: random_mask_1d((8, 32), 0), ValueError, "'acceleration'.*>= 1"),
    "acceleration-negative": (lambda: make_mask("equispaced", (8, 32), -4), ValueError, "'acceleration'"),
    "acceleration-below-one": (lambda: make_mask("poisson", (8, 32), 0.5), ValueError, "'acceleration'"),
    "acceleration-string": (lambda: make_mask("gaussian", (8, 32), "4"), TypeError, "'acceleration'"),
    "acceleration-unreachable-poisson": (lambda: poisson_disc_mask((8, 8), 60, 0.2), ValueError,
                                         "'acceleration'"),
    "center-fraction-zero": (lambda: random_mask_1d((8, 32), 4, 0.0), ValueError, "'center_fraction'.*\\(0, 1\\)"),
    "center-fraction-above-one": (lambda: random_mask_1d((8, 32), 4, 1.2), ValueError, "'center_fraction'"),
    "center-fraction-too-big-for-acc": (lambda: make_mask("random", (8, 64), 8, 0.5), ValueError,
                                        "'center_fraction'.*at most"),
    "mask-kind": (lambda: make_mask("spiral", (8, 8), 2), ValueError, "'kind'.*one of"),
    "mask-shape-1d": (lambda: make_mask("random", (64,), 2), TypeError, "'shape'"),
    "mask-seed-negative": (lambda: make_mask("random", (8, 64), 2, seed=-1), ValueError, "'seed'"),
    "mask-seed-str": (lambda: make_mask("random", (8, 64), 2, seed="a"), TypeError, "'seed'"),
    "seed-for-file-int": (lambda: seed_for_file(3), TypeError, "'name'"),
    # --- coil maps -------------------------------------------------------------------------------
    "espirit-acs-too-small": (lambda: espirit_maps(MultiCoilMRI(random_mask_1d((32, 32), 4, 0.25), 4).A(
        torch.ones(1, 2, 32, 32))), ValueError, "'kspace'.*ACS.*8 lines"),
    "espirit-channels": (lambda: espirit_maps(torch.zeros(1, 3, 4, 16, 16)), ValueError,
                         "'kspace'.*\\(B, 2, N, H, W\\)"),
    "espirit-complex": (lambda: espirit_maps(torch.zeros(4, 16, 16, dtype=torch.complex64)), TypeError, "'kspace'"),
    "espirit-nan": (lambda: espirit_maps(_nan((2, 4, 16, 16))), ValueError, "'kspace'.*finite"),
    "birdcage-zero-coils": (lambda: birdcage_maps(0, (8, 8)), ValueError, "'n_coils'"),
    # --- CT ------------------------------------------------------------------------------------
    "ct-more-views-than-bins": (lambda: CT(8, n_views=13), ValueError,
                                "'n_views'.*at most 12 views \\(the number of detector bins"),
    "ct-more-angles-than-bins": (lambda: CT(8, angles=list(range(20)), circle=True), ValueError,
                                 "'angles'.*at most 8 views"),
    "ct-non-square": (lambda: CT((1, 8, 10), n_views=4), ValueError, "'img_size'.*square"),
    "ct-zero-views": (lambda: CT(8, n_views=0), ValueError, "'n_views'.*>= 1"),
    "ct-float-views": (lambda: CT(8, n_views=4.0), TypeError, "'n_views'"),
    "ct-angle-range-zero": (lambda: CT(8, n_views=4, angle_range=0), ValueError, "'angle_range'.*\\(0, 360\\]"),
    "ct-angle-range-too-big": (lambda: CT(8, n_views=4, angle_range=400), ValueError, "'angle_range'"),
    "ct-views-and-angles": (lambda: CT(8, n_views=4, angles=[0.0, 1.0]), ValueError, "'n_views'.*None"),
    "ct-angles-nan": (lambda: CT(8, angles=[0.0, NAN]), ValueError, "'angles'.*finite"),
    "ct-circle-fan": (lambda: CT(8, n_views=4, circle=True, fan_beam=True), ValueError, "'circle'"),
    "ct-fan-bad-key": (lambda: CT(8, n_views=4, fan_beam=True, fan_parameters={"radius": 3}), ValueError,
                       "'fan_parameters'.*unknown"),
    "ct-sigma-negative": (lambda: CT(8, n_views=4, sigma=-0.1), ValueError, "'sigma'.*>= 0"),
    "ct3d-2d-size": (lambda: CT3D((1, 8, 8), n_views=4), ValueError, "'img_size'.*\\(C, D, N, N\\)"),
    # --- blur / kernels --------------------------------------------------------------------------
    "blur-kernel-too-big": (lambda: Blur(torch.ones(9, 9) / 81, (1, 8, 8)), ValueError, "'kernel'.*no larger"),
    "blur-padding": (lambda: Blur(uniform_kernel(3), (1, 8, 8), padding="same"), ValueError, "'padding'.*one of"),
    "blur-3d-reflect": (lambda: Blur(torch.ones(3, 3, 3), (1, 4, 8, 8), padding="reflect"), ValueError,
                        "'padding'.*3D"),
    "blur-kernel-numpy": (lambda: Blur(np.ones((3, 3)), (1, 8, 8)), TypeError, "'kernel'.*torch.Tensor"),
    "blur-kernel-nan": (lambda: Blur(_nan((3, 3)), (1, 8, 8)), ValueError, "'kernel'.*finite"),
    "blur-kernel-channels": (lambda: Blur(torch.ones(3, 3, 3), (2, 8, 8)), ValueError, "'kernel'.*1 or 2"),
    "blur-kernel-complex": (lambda: Blur(torch.ones(3, 3, dtype=torch.complex64), (1, 8, 8)), TypeError, "'kernel'"),
    "circular-blur-per-sample": (lambda: CircularBlur(torch.ones(2, 1, 3, 3), (1, 8, 8)), ValueError, "'kernel'"),
    "gaussian-std-zero": (lambda: gaussian_kernel(5, 0.0), ValueError, "'std'"),
    "gaussian-size-zero": (lambda: gaussian_kernel(0, 1.0), ValueError, "'size'"),
    "motion-intensity-zero": (lambda: motion_kernel(9, intensity=0.0), ValueError, "'intensity'"),
    "motion-generator-int": (lambda: motion_kernel(9, generator=3), TypeError, "'generator'"),
    # --- inpainting masks ----------------------------------------------------------------------------
    "box-frac": (lambda: box_mask((8, 8), 1.5), ValueError, "'box_frac'"),
    "box-outside": (lambda: box_mask((8, 8), box=(6, 6, 4, 4)), ValueError, "'box'.*inside"),
    "half-side": (lambda: half_mask((8, 8), "middle"), ValueError, "'side'"),
    "random-keep": (lambda: random_mask((8, 8), keep=1.5), ValueError, "'keep'"),
    "brush-img-size": (lambda: brush_mask((8,)), ValueError, "'img_size'"),
    # --- matrix / stacking -----------------------------------------------------------------------
    "matrix-1d": (lambda: MatrixOperator(torch.ones(3)), ValueError, "'A'.*2 dimensions"),
    "matrix-nan": (lambda: MatrixOperator(_nan((2, 2))), ValueError, "'A'.*finite"),
    "matrix-list": (lambda: MatrixOperator([[1.0]]), TypeError, "'A'"),
    "matrix-sigma-str": (lambda: MatrixOperator(torch.eye(2), sigma="0.1"), TypeError, "'sigma'"),
    "stack-not-invdiff": (lambda: SliceWise(torch.nn.Identity(), 3), TypeError, "'op2d'"),
    "stack-depth-zero": (lambda: SliceWise(_ct(), 0), ValueError, "'depth'"),
    "stack-3d-op": (lambda: SliceWise(MRI(None, (2, 2, 8, 8)), 2), ValueError, "'op2d'.*2D operator"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_names_the_argument(name):
    fn, exc, pattern = CASES[name]
    with pytest.raises(exc, match="argument " + pattern) as info:
        fn()
    msg = str(info.value)
    assert "expected" in msg and "received" in msg


def test_error_is_raised_before_any_torch_error():
    """The message comes from invdiff, not from a broadcasting failure deep inside torch/deepinv."""
    op = MultiCoilMRI(random_mask_1d((16, 16), 2, 0.25), 4, (2, 16, 16))
    with pytest.raises(ValueError) as info:
        op.A(torch.zeros(1, 2, 16, 15))
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert "argument 'x'" in str(info.value)
