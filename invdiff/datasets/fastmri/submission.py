"""fastMRI submissions: reconstructions written in the submission format and scored as ``fastmri/evaluate.py``
scores them (see :mod:`invdiff.datasets.fastmri`; the checked public entry is :func:`invdiff.datasets.evaluate`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..._validate import check_choice, fail
from .files import TARGET_KEYS, DataFileError, _open_h5, inspect_fastmri
from .kspace import find_h5

# ------------------------------------------------------------------------------------------------
# writing and evaluation
# ------------------------------------------------------------------------------------------------
def write_reconstruction(path, reconstruction, attrs: dict | None = None, *, extra: dict | None = None) -> Path:
    """Write one volume's reconstruction in the fastMRI submission format, atomically.

    ``reconstruction``: magnitude ``(slices, h, w)`` (numpy or torch), stored as float32 dataset
    ``reconstruction``; ``attrs`` (numbers, strings) become file attributes; ``extra`` maps names to more arrays
    (e.g. ``reconstruction_std``; ``evaluate.py`` reads only ``reconstruction``). The file appears only once
    complete (temporary file + ``os.replace``).
    """
    from ...io_utils import atomic_write_h5

    r = reconstruction.detach().cpu().numpy() if isinstance(reconstruction, torch.Tensor) else np.asarray(reconstruction)
    if r.ndim != 3 or np.iscomplexobj(r):
        fail("reconstruction", "a real magnitude volume (slices, h, w)", f"array of shape {r.shape}, dtype {r.dtype}")
    if not np.isfinite(r).all():
        fail("reconstruction", "finite values", f"array of shape {r.shape} with NaN/Inf")
    def fill(f):
        f.create_dataset("reconstruction", data=r.astype(np.float32))
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=np.asarray(v, dtype=np.float32))
        for k, v in (attrs or {}).items():
            if v is None:
                continue
            f.attrs[k] = v if isinstance(v, (int, float, str, np.number)) else str(v)

    return atomic_write_h5(path, fill)


def save_reconstructions(reconstructions: dict, out_dir) -> list[Path]:
    """``fastmri.save_reconstructions``: ``{fname: (slices, h, w)}`` -> ``out_dir/fname`` h5 files."""
    return [write_reconstruction(Path(out_dir) / fname, r) for fname, r in reconstructions.items()]


def read_reconstruction(path) -> np.ndarray:
    """The ``reconstruction`` dataset of a submission file (raises :class:`DataFileError` if unreadable)."""
    with _open_h5(path) as f:
        if "reconstruction" not in f:
            raise DataFileError(path, f"no 'reconstruction' dataset (found keys {sorted(f.keys())})")
        return np.asarray(f["reconstruction"][()])


def evaluate(targets, predictions_dir, challenge: str | None = None, *, acceleration=None,
             acquisition: str | None = None) -> tuple[dict, dict]:
    """``fastmri/evaluate.py``: score every target file that has a prediction of the same name.

    For each target file (a folder of h5 files or a list): skip it if ``acquisition`` / ``acceleration`` are
    given and differ from its attributes; read the target (``reconstruction_rss`` for ``challenge="multicoil"``,
    ``reconstruction_esc`` for ``"singlecoil"``; by default the file's own challenge), the prediction's
    ``reconstruction``, and compute :func:`invdiff.metrics.fastmri_metrics` (centre crop to the target width).
    Target files without any target (test files) and targets without a prediction are skipped.

    Returns ``(per_volume, summary)``: ``{fname: {"NMSE", "PSNR", "SSIM", "MSE"}}`` and
    :func:`invdiff.metrics.fastmri_summary` (``{metric: (mean, 2 * std, n)}``; fastMRI prints mean +/- 2 std).
    """
    from ...metrics import fastmri_metrics, fastmri_summary

    if challenge is not None:
        check_choice("challenge", challenge, tuple(TARGET_KEYS))
    pred_dir = Path(predictions_dir)
    per_volume = {}
    for tpath in find_h5(targets):
        info = inspect_fastmri(tpath)
        if acquisition is not None and info.attrs.get("acquisition") != acquisition:
            continue
        if acceleration is not None and info.attrs.get("acceleration") != acceleration:
            continue
        key = TARGET_KEYS[challenge or info.challenge]
        if info.target_key is None:      # test/challenge files have no target
            continue
        with _open_h5(tpath) as f:
            if key not in f:
                raise DataFileError(tpath, f"no '{key}' target to evaluate against (challenge {challenge!r})")
            target = np.asarray(f[key][()])
        ppath = pred_dir / tpath.name
        if not ppath.is_file():
            continue
        per_volume[tpath.name] = fastmri_metrics(read_reconstruction(ppath), target)
    summary = fastmri_summary(list(per_volume.values())) if per_volume else {}
    return per_volume, summary

