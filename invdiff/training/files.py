r"""Training images streamed from files on disk: fastMRI k-space, NIfTI and DICOM volumes (``--data KIND:DIR``).

Memory stays bounded whatever the size of the data set (the fastMRI knee training set is ~90 GB): the source keeps
only an index of (file, number of slices), built lazily from the headers on first use, and per file the one or two
normalisation numbers; every image is read from disk when it is needed (one slice of one file) and nothing else is
cached. The source is a plain picklable object, so DataLoader workers (``--workers``) each read their own slices.

Sampling: the images of step k are the slices with global indices drawn uniformly (with replacement) from a
generator seeded by (seed, k) over the sorted index, so the stream is a function of (seed, k) alone (resume exact).

Per format (documented here and in the model card):

- ``fastmri:DIR`` (``*.h5``): the slice's fully sampled k-space -> complex image by
  :func:`invdiff.datasets.fastmri.coil_combine` (``--fastmri-combine rss-phase`` (default) or ``espirit``;
  single-coil: the inverse FFT), centre-cropped or zero-padded to ``--size``, divided by
  :func:`invdiff.datasets.fastmri.volume_scale` (the maximum zero-filled RSS magnitude of the volume: the same
  normalisation ``invdiff reconstruct`` applies to measured k-space, :func:`~invdiff.datasets.fastmri.kspace_scale`).
  2 channels (real, imaginary).
- ``nifti:DIR`` (``*.nii``, ``*.nii.gz``) and ``dicom:DIR`` (every folder holding one DICOM series): 2D slices along
  ``--slice-axis`` of the (D, H, W) volume, centre-cropped or zero-padded to ``--size`` (the pixel scale is kept,
  never resampled). CT (``--modality ct``, or ``auto`` with DICOM Modality "CT" / a NIfTI volume whose minimum is
  below -500, i.e. in HU): HU mapped linearly from ``--hu-window lo,hi`` (default -1000,3000: air 0, water 0.25)
  onto [0, 1] and clipped, the window of :data:`invdiff.datasets.anatomy.HU_WINDOW`. MRI: magnitude scaled by the
  volume's min-max to [0, 1], as ``invdiff reconstruct`` scales volumes. 1 channel.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch

from .._validate import fail
from .config import TrainConfig


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")))


def _dicom_series(folder: Path) -> list[Path]:
    from ..datasets.volumes import dicom_files

    dirs = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    return [d for d in dirs if dicom_files(d)]


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Centre crop or zero-pad the last two axes to size x size (pixel scale unchanged)."""
    H, W = img.shape[-2:]
    ph, pw = max(size - H, 0), max(size - W, 0)
    if ph or pw:
        img = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)])
    H, W = img.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return img[..., top:top + size, left:left + size]


class FileSliceSource:
    """Slices of fastMRI / NIfTI / DICOM files, streamed (module docstring). ``source(step, batch_size)`` ->
    (B, C, size, size); :meth:`part` reads only rows ``[start, stop)``."""

    stats_images = 64

    def __init__(self, kind: str, folder, *, size: int, seed: int = 0, combine: str = "rss-phase",
                 slice_axis: int = 0, modality: str = "auto", hu_window=(-1000.0, 3000.0)):
        self.kind, self.folder, self.size, self.seed = kind, Path(folder), int(size), int(seed)
        self.combine, self.slice_axis, self.modality = combine, int(slice_axis), modality
        self.hu_window = tuple(float(v) for v in hu_window)
        if not self.folder.is_dir():
            fail("data", f"an existing folder ({kind}:DIR)", str(folder))
        if kind == "fastmri":
            from ..datasets.fastmri import find_h5

            self.files = find_h5(self.folder)
        elif kind == "nifti":
            self.files = _nifti_files(self.folder)
        else:
            self.files = _dicom_series(self.folder)
        if not self.files:
            what = {"fastmri": ".h5 files", "nifti": ".nii / .nii.gz files", "dicom": "DICOM series"}[kind]
            fail("data", f"a folder with {what} ({kind}:DIR)", str(folder))
        self.channels = 2 if kind == "fastmri" else 1
        self._starts: list[int] | None = None      # cumulative slice counts (the lazy index)
        self._norm: dict[int, tuple] = {}          # file -> normalisation constants (a few floats)

    # -- the index ----------------------------------------------------------------------------------
    def _count(self, path: Path) -> int:
        if self.kind == "fastmri":
            from ..datasets.fastmri import inspect_fastmri

            return inspect_fastmri(path).num_slices
        if self.kind == "nifti":
            from ..datasets.volumes import nifti_slice_count

            return nifti_slice_count(path, self.slice_axis)
        if self.slice_axis == 0:
            from ..datasets.volumes import dicom_files

            return len(dicom_files(path))
        from ..datasets.volumes import read_dicom_series

        return int(read_dicom_series(path).data.shape[self.slice_axis])

    @property
    def starts(self) -> list[int]:
        if self._starts is None:
            starts, n = [], 0
            for p in self.files:
                starts.append(n)
                n += self._count(p)
            self._starts = starts + [n]
        return self._starts

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, j: int) -> tuple[int, int]:
        """(file number, slice) of global slice index ``j``."""
        i = bisect.bisect_right(self.starts, j) - 1
        return i, j - self.starts[i]

    # -- one image --------------------------------------------------------------------------------
    def _normalisation(self, i: int) -> tuple:
        if i not in self._norm:
            path = self.files[i]
            if self.kind == "fastmri":
                from ..datasets.fastmri import volume_scale

                self._norm[i] = (volume_scale(path),)
            else:
                from ..datasets.volumes import read_dicom_series, read_nifti

                vol = read_nifti(path) if self.kind == "nifti" else read_dicom_series(path)
                lo, hi = float(vol.data.min()), float(vol.data.max())
                modality = self.modality
                if modality == "auto":
                    tag = vol.meta.get("Modality") if self.kind == "dicom" else None
                    modality = "ct" if (tag == "CT" or (tag is None and lo < -500)) else "mri"
                self._norm[i] = (modality, lo, hi)
                del vol
        return self._norm[i]

    def image(self, j: int) -> torch.Tensor:
        """Training image of global slice ``j``: (C, size, size) float32."""
        i, s = self.locate(int(j))
        path = self.files[i]
        if self.kind == "fastmri":
            from ..datasets.fastmri import training_image

            z = training_image(path, s, size=self.size, method=self.combine, scale=self._normalisation(i)[0])
            return torch.from_numpy(np.stack([z.real, z.imag])).float()
        modality, lo, hi = self._normalisation(i)
        if self.kind == "nifti":
            from ..datasets.volumes import read_nifti_slice

            img = read_nifti_slice(path, s, self.slice_axis)
        else:
            from ..datasets.volumes import read_dicom_series

            img = np.take(read_dicom_series(path).data, s, axis=self.slice_axis)
        if modality == "ct":
            a, b = self.hu_window
            img = np.clip((img - a) / (b - a), 0.0, 1.0)
        else:
            img = (img - lo) / max(hi - lo, 1e-12)
        return torch.from_numpy(np.ascontiguousarray(_fit(img.astype(np.float32), self.size)))[None]

    # -- the stream ---------------------------------------------------------------------------------
    def indices(self, step: int, batch_size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 700_000_001)
        return torch.randint(len(self), (batch_size,), generator=g)

    def part(self, step: int, batch_size: int, start: int, stop: int) -> torch.Tensor:
        return torch.stack([self.image(int(j)) for j in self.indices(step, batch_size)[start:stop]])

    def __call__(self, step: int, batch_size: int) -> torch.Tensor:
        return self.part(step, batch_size, 0, batch_size)


def file_source(cfg: TrainConfig) -> FileSliceSource:
    """The :class:`FileSliceSource` of a config's ``fastmri:DIR`` / ``nifti:DIR`` / ``dicom:DIR``."""
    kind, folder = cfg.data.split(":", 1)
    return FileSliceSource(kind, folder, size=cfg.size, seed=cfg.seed, combine=cfg.fastmri_combine,
                           slice_axis=cfg.slice_axis, modality=cfg.modality, hu_window=cfg.hu_window)


__all__ = ["FileSliceSource", "file_source"]
