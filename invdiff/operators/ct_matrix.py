r"""Sparse system matrix of deepinv's Radon transform: exact :math:`A` and :math:`A^\top` as two CSR products.

deepinv's ``Radon`` (parallel and fan beam) zero-pads the image to :math:`P = \lceil\sqrt2 N\rceil` pixels
(unless ``circle``), samples it bilinearly (``grid_sample``, ``align_corners=True``, zero padding) at the
points :math:`g_{i,j,k}` of a precomputed grid (ray step :math:`i`, view :math:`j`, detector bin :math:`k`)
and sums along the ray:

.. math::  (R x)_{k,j} = \sum_i \sum_{p} h(g^x_{i,j,k} - p_x)\, h(g^y_{i,j,k} - p_y)\, x_p,
           \qquad h(t) = \max(0, 1 - |t|)

(grid coordinates in pixels of the padded image). That is linear in :math:`x`, so
:math:`R_{(k,j), p} = \sum_i h(\cdot)h(\cdot)` is a sparse matrix with about :math:`2`-:math:`3` entries per
pixel a ray crosses. :func:`build_system_matrix` computes it from deepinv's own grid, with the weights in
float32 exactly as ``grid_sample`` forms them, so :math:`R x` equals deepinv's forward projection up to the
order of the float32 sums (measured: :math:`\le 10^{-6}` relative, ``benchmarks/results/ct_operators.md``).
:math:`R^\top` is the transposed matrix, stored as its own CSR, so both directions are one CSR-times-dense
product of the same cost (:math:`A^\top` is the exact adjoint of :math:`A` in float32).

Rows are in sinogram order (detector bin major, then view: row :math:`k \cdot n_{views} + j`) and columns
in image order (row-major pixels), so a ``(B, C, N, N)`` batch is one product with the ``(N^2, B C)``
matrix of its columns.

Matrices are cached per geometry (an LRU dictionary keyed by a digest of the grid definition, then by
device and dtype): two operators with the same geometry share the same matrix object; the first use on a
CUDA device copies it there once (:func:`system_matrix`, :func:`on_device`). With :data:`DISK_CACHE` (or the
``INVDIFF_CT_CACHE`` environment variable) set to a folder, built matrices are also saved there and loaded
by later processes (the build takes about a minute at 512 px / 180 views, loading about a second).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

#: optional on-disk cache: a folder (or the ``INVDIFF_CT_CACHE`` environment variable) where built matrices are
#: saved as ``ct-<geometry key>.npz`` and loaded from on later runs; None (default) keeps the cache in memory only.
DISK_CACHE: str | None = None

#: the cache drops least-recently used matrices while it holds more than this many bytes (the newest is
#: always kept). Operators keep their own matrices alive whatever the cache holds.
CACHE_BYTES = 4 * 2 ** 30

# grid points handled per chunk while building (bounds the build's working memory to ~0.5 GB)
_CHUNK_POINTS = 6_000_000


def geometry_key(radon, n: int) -> str:
    """Digest of everything deepinv's grid (so the matrix) depends on: N, circle, fan parameters, angles, dtype."""
    import deepinv

    h = hashlib.sha1()
    h.update(f"invdiff-ct-matrix-1 deepinv {deepinv.__version__}".encode())   # the grid is deepinv's code
    fp = sorted((radon.fan_parameters or {}).items()) if radon.fan_beam else []
    h.update(repr((int(n), bool(radon.circle), bool(radon.fan_beam), fp, tuple(radon.all_grids.shape),
                   str(radon.all_grids.dtype))).encode())
    h.update(radon.theta.detach().cpu().numpy().tobytes())         # deepinv builds the grid from these alone
    return h.hexdigest()


def _padding(n: int, circle: bool) -> tuple[int, int]:
    """(padded size, pad before) exactly as deepinv's ``Radon.forward`` pads a N x N image."""
    if circle:
        return n, 0
    sqrt2 = (2 * torch.ones(1)).sqrt()                                 # float32, as deepinv
    pad = int((sqrt2 * n - n).ceil())
    return n + pad, (n + pad) // 2 - n // 2


def _circle_mask(n: int) -> np.ndarray:
    """deepinv's ``circle=True`` support mask (float32 arithmetic as in ``Radon.forward``), flattened."""
    yax = 2 * torch.arange(n, dtype=torch.float32)[None, :].expand(n, -1) / (n - 1) - 1.0
    return ((yax.T ** 2 + yax ** 2) <= 1).reshape(-1).numpy()


def build_system_matrix(radon, n: int) -> sp.csr_matrix:
    r"""The matrix :math:`R` of deepinv ``Radon`` module ``radon`` for N x N images (float32 CSR, no normalisation).

    Vectorised over all grid points, in chunks of detector bins. Rows ``k * n_views + j``, columns ``row * N + col``.
    """
    grid = radon.all_grids.detach().cpu()
    if grid.dim() != 4 or grid.shape[0] != 1:                         # parallel_computation=False layout
        grid = torch.cat(list(grid), 2)
    grid = grid[0].to(torch.float32)                                   # (L, n_views * n_det, 2)
    nv = int(radon.theta.numel())
    L, ncol, _ = grid.shape
    nd = ncol // nv
    wp, before = _padding(n, bool(radon.circle))
    g = grid.reshape(L, nv, nd, 2).permute(2, 1, 0, 3)                 # (n_det, n_views, L, 2): row order
    kpc = max(1, _CHUNK_POINTS // (L * nv))                            # detector bins per chunk
    data, indices, row_nnz = [], [], []
    corner = torch.tensor([0, 1, n, n + 1], dtype=torch.int32)          # nw, ne, sw, se neighbours
    for k0 in range(0, nd, kpc):
        gc = g[k0:k0 + kpc].reshape(-1, L, 2)                          # rows k * n_views + j, k = k0.., all j
        # grid_sample, align_corners=True: unnormalise in float32, then bilinear weights of the 4 neighbours
        pc = (gc + 1) / 2 * (wp - 1)                                   # (rows, L, 2) pixel coordinates
        f = pc.floor()
        near = ((f >= before - 1) & (f < before + n)).all(-1)          # grid points that touch the image
        counts = near.sum(1)
        pc = pc[near]                                                  # (S, 2), grouped by row
        f = pc.floor()
        ix, iy, fx, fy = pc[:, 0], pc[:, 1], f[:, 0], f[:, 1]
        x0 = fx.to(torch.int32) - before                               # columns / rows in the unpadded image
        y0 = fy.to(torch.int32) - before
        wx1, wy1 = ix - fx, iy - fy
        wx0, wy0 = (fx + 1) - ix, (fy + 1) - iy
        wx0 *= x0 >= 0                                                  # neighbours outside the image: weight 0
        wx1 *= x0 < n - 1
        wy0 *= y0 >= 0
        wy1 *= y0 < n - 1
        val = torch.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1], 1)
        col = ((y0 * n + x0)[:, None] + corner).clamp_(0, n * n - 1)    # (weight-0 entries may point anywhere)
        indptr = np.zeros(gc.shape[0] + 1, np.int64)
        np.cumsum(4 * counts.numpy(), out=indptr[1:])
        m = sp.csr_matrix((val.reshape(-1).numpy(), col.reshape(-1).numpy(), indptr), shape=(gc.shape[0], n * n))
        m.sum_duplicates()                                             # sums over ray steps i, sorts columns
        m.eliminate_zeros()
        data.append(m.data)
        indices.append(m.indices.astype(np.int32, copy=False))
        row_nnz.append(np.diff(m.indptr))
    row_nnz = np.concatenate(row_nnz)
    idx = np.int32 if row_nnz.sum() < 2 ** 31 - 1 else np.int64
    indptr = np.zeros(nd * nv + 1, idx)
    np.cumsum(row_nnz, out=indptr[1:])
    mat = sp.csr_matrix((np.concatenate(data), np.concatenate(indices).astype(idx, copy=False), indptr),
                        shape=(nd * nv, n * n))
    if radon.circle:
        mat = mat @ sp.diags(_circle_mask(n).astype(np.float32))
        mat.eliminate_zeros()
    mat.sort_indices()
    return mat


def _torch_csr(m: sp.csr_matrix) -> torch.Tensor:
    idx = np.int32 if max(m.nnz, m.shape[1]) < 2 ** 31 - 1 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(idx, copy=False)),
                                       torch.from_numpy(m.indices.astype(idx, copy=False)),
                                       torch.from_numpy(np.ascontiguousarray(m.data, dtype=np.float32)),
                                       size=m.shape, check_invariants=False)


@dataclass(eq=False)
class SystemMatrix:
    r"""One geometry's :math:`R` and :math:`R^\top` as torch CSR tensors on one device / dtype.

    ``forward`` is ``(M, npix)``, ``transpose`` is ``(npix, M)``; ``build_seconds`` is the time the CPU build
    took (0 for a device copy); ``norm`` caches :math:`\|R\|_2` once an operator computed it; ``gram`` the
    eigendecomposition of :math:`RR^\top` once :func:`gram_eigh` computed it.
    """

    key: str
    forward: torch.Tensor
    transpose: torch.Tensor
    build_seconds: float = 0.0
    norm: torch.Tensor | None = None
    gram: tuple[torch.Tensor, torch.Tensor] | None = None

    def __deepcopy__(self, memo):                  # immutable and shared: copies of an operator share it too
        return self

    def __copy__(self):
        return self

    @property
    def nnz(self) -> int:
        return int(self.forward.values().numel())

    @property
    def nbytes(self) -> int:
        """Bytes of both CSR matrices (values, column indices, row pointers)."""
        return sum(t.crow_indices().numel() * t.crow_indices().element_size()
                   + t.col_indices().numel() * t.col_indices().element_size()
                   + t.values().numel() * t.values().element_size() for t in (self.forward, self.transpose))

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def dtype(self) -> torch.dtype:
        return self.forward.dtype


_CACHE: "OrderedDict[tuple, SystemMatrix]" = OrderedDict()
_LOCK = threading.Lock()


def _evict():
    total = sum(m.nbytes for m in _CACHE.values())
    while len(_CACHE) > 1 and total > CACHE_BYTES:
        _, m = _CACHE.popitem(last=False)
        total -= m.nbytes


def system_matrix(radon, n: int, key: str | None = None) -> SystemMatrix:
    """The cached CPU float32 :class:`SystemMatrix` of ``radon`` for N x N images (built on first use)."""
    key = key or geometry_key(radon, n)
    ck = (key, "cpu", torch.float32)
    with _LOCK:
        hit = _CACHE.get(ck)
        if hit is not None:
            _CACHE.move_to_end(ck)
            return hit
    if radon.all_grids.numel() == 0:
        raise RuntimeError("this Radon module's sampling grids were released; build the matrix before that")
    t0 = time.perf_counter()
    folder = DISK_CACHE or os.environ.get("INVDIFF_CT_CACHE")
    path = Path(folder) / f"ct-{key}.npz" if folder else None
    m = _load(path, n) if path is not None and path.is_file() else None
    if m is None:
        m = build_system_matrix(radon, n)
        if path is not None:
            _save(path, m)
    mt = m.T.tocsr()
    mt.sort_indices()
    return _store(ck, SystemMatrix(key, _torch_csr(m), _torch_csr(mt), time.perf_counter() - t0))


def _save(path: Path, m: sp.csr_matrix) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, indptr=m.indptr, indices=m.indices, data=m.data, shape=np.asarray(m.shape))
    os.replace(tmp, path)                                              # atomic: readers see all or nothing


def _load(path: Path, n: int) -> sp.csr_matrix | None:
    try:
        with np.load(path) as z:
            m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(s) for s in z["shape"]))
    except Exception:  # noqa: BLE001 - any unreadable or damaged file is rebuilt (and overwritten)
        return None
    return m if m.shape[1] == n * n and m.data.dtype == np.float32 else None


def on_device(sm: SystemMatrix, device, dtype=torch.float32) -> SystemMatrix:
    """``sm`` copied to ``device`` / ``dtype`` once; the copy is cached under the same geometry key."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device == sm.device and dtype == sm.dtype:
        return sm
    ck = (sm.key, str(device), dtype)
    with _LOCK:
        hit = _CACHE.get(ck)
        if hit is not None:
            _CACHE.move_to_end(ck)
            return hit
    return _store(ck, SystemMatrix(sm.key, sm.forward.to(device=device, dtype=dtype),
                                   sm.transpose.to(device=device, dtype=dtype), 0.0, sm.norm))


def _store(ck, sm: SystemMatrix) -> SystemMatrix:
    with _LOCK:
        sm = _CACHE.setdefault(ck, sm)
        _CACHE.move_to_end(ck)
        _evict()
    return sm


def cache_info() -> list[dict]:
    """What the cache holds, oldest first: geometry key (12 characters), device, dtype, nnz, MiB."""
    with _LOCK:
        return [dict(key=k[0][:12], device=k[1], dtype=str(k[2]), nnz=m.nnz, mib=m.nbytes / 2 ** 20)
                for k, m in _CACHE.items()]


def clear_cache() -> None:
    """Forget every cached matrix (operators that hold one keep it)."""
    with _LOCK:
        _CACHE.clear()


def gram_eigh(sm: SystemMatrix) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(s, U)``: :math:`RR^\top = U \mathrm{diag}(s) U^\top` (float64, CPU, ``s >= 0`` ascending), cached on ``sm``.

    :math:`RR^\top` (M x M) is formed in float64 from the float32 matrix entries, 256 columns at a time; the
    eigendecomposition costs :math:`O(M^3)` (M = 728 for 64 px / 8 views: about 0.1 s; 1456: about 1-2 s, one
    thread). Meant for few measurements (sparse view): the caller bounds M.
    """
    if sm.gram is None:
        R = sm.forward.to(device="cpu", dtype=torch.float64)
        Rt = sm.transpose.to(device="cpu", dtype=torch.float64)
        m = R.shape[0]
        K = torch.empty(m, m, dtype=torch.float64)
        for c0 in range(0, m, 256):
            k = min(256, m - c0)
            E = torch.zeros(m, k, dtype=torch.float64)
            E[torch.arange(c0, c0 + k), torch.arange(k)] = 1.0
            K[:, c0:c0 + k] = R @ (Rt @ E)
        s, U = torch.linalg.eigh((K + K.T) / 2)
        sm.gram = (s.clamp_min(0.0), U)
    return sm.gram


class _CSRMatmul(torch.autograd.Function):
    r""":math:`Y = M X` with :math:`M^\top` given: the backward pass is :math:`M^\top G` (itself differentiable)."""

    @staticmethod
    def forward(ctx, x, mat, mat_t):
        ctx.mats = (mat, mat_t)
        return mat @ x

    @staticmethod
    def backward(ctx, g):
        mat, mat_t = ctx.mats
        return _CSRMatmul.apply(g, mat_t, mat), None, None


def csr_matmul(mat: torch.Tensor, mat_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`M X` for CSR ``mat`` and dense ``(ncols, K)`` ``x``; gradients use ``mat_t`` = :math:`M^\top` (CSR)."""
    return _CSRMatmul.apply(x, mat, mat_t)


__all__ = ["DISK_CACHE", "CACHE_BYTES", "SystemMatrix", "build_system_matrix", "system_matrix", "on_device",
           "gram_eigh", "geometry_key", "cache_info", "clear_cache", "csr_matmul"]
