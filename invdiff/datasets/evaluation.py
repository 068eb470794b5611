"""``invdiff.datasets.evaluate``: fastMRI evaluation that refuses a folder with nothing to score.

:func:`invdiff.datasets.fastmri.evaluate` follows ``fastmri/evaluate.py``, which skips every target without a
prediction of the same name, so a wrong or empty predictions folder scores nothing and returns ``({}, {})``. The
public :func:`evaluate` checks first, before any volume is read, that the predictions folder exists and holds at
least one ``.h5`` file named like a target, and afterwards that at least one volume was scored (the
``acquisition`` / ``acceleration`` filters and target-less test files can still leave nothing); otherwise one
``ValueError`` names the argument, what was expected and what was found.
"""
from __future__ import annotations

from pathlib import Path

from .._validate import fail
from . import fastmri as _fastmri


def _names(paths, limit: int = 3) -> str:
    names = sorted(p.name for p in paths)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} files)" if len(names) > limit else "")


def evaluate(targets, predictions_dir, challenge: str | None = None, *, acceleration=None,
             acquisition: str | None = None) -> tuple[dict, dict]:
    """``fastmri/evaluate.py`` (see :func:`invdiff.datasets.fastmri.evaluate`), with one clear error when there is
    nothing to score.

    Returns ``(per_volume, summary)``: ``{fname: {"NMSE", "PSNR", "SSIM", "MSE"}}`` and ``{metric: (mean, 2 std, n)}``.

    Raises:
        ValueError: ``predictions_dir`` is not a folder, holds no ``.h5`` file, or none named like a target file;
            ``targets`` holds no ``.h5`` file; or every matching volume was filtered out / has no target.

    Example:
        >>> import tempfile, invdiff
        >>> with tempfile.TemporaryDirectory() as d:
        ...     invdiff.datasets.evaluate(d, d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: argument 'targets': expected a fastMRI file or a folder with .h5 target files, received ...
    """
    pred_dir = Path(predictions_dir)
    if not pred_dir.is_dir():
        fail("predictions_dir", "an existing folder of fastMRI reconstruction .h5 files",
             f"{str(predictions_dir)!r} ({'a file' if pred_dir.exists() else 'does not exist'})")
    target_files = _fastmri.find_h5(targets)
    if not target_files:
        fail("targets", "a fastMRI file or a folder with .h5 target files", f"{str(targets)!r} (no .h5 files)")
    preds = _fastmri.find_h5(pred_dir)
    if not preds:
        fail("predictions_dir", "a folder with reconstruction .h5 files named like the target files",
             f"{str(predictions_dir)!r} (no .h5 files)")
    matching = {p.name for p in preds} & {t.name for t in target_files}
    if not matching:
        fail("predictions_dir", f"reconstruction .h5 files named like the target files ({_names(target_files)})",
             f"{str(predictions_dir)!r} with no matching name ({_names(preds)})")
    per_volume, summary = _fastmri.evaluate(targets, pred_dir, challenge, acceleration=acceleration,
                                            acquisition=acquisition)
    if not per_volume:
        filters = ", ".join(f"{k}={v!r}" for k, v in (("acquisition", acquisition), ("acceleration", acceleration))
                            if v is not None)
        fail("targets", "at least one volume with a target and a prediction"
                        + (f" that passes {filters}" if filters else ""),
             f"{len(matching)} matching file(s) ({_names([Path(n) for n in matching])}), none scored: "
             + ("filtered out or " if filters else "") + "test files without a target")
    return per_volume, summary


__all__ = ["evaluate"]
