"""Atomic output writing: a reader never sees a half-written file (write to a temp file, fsync, os.replace).

A full disk (``ENOSPC``, a quota, a file-size limit, or a short write that a library reports without an errno)
is raised as one :class:`DiskFullError` naming the output; the temporary file is removed, so nothing partial is
left. HDF5 files are built in memory (:func:`atomic_write_h5`) and written with one plain ``write``: the HDF5
library never meets a failing disk (a failed HDF5 write followed by its close at exit can crash the process).
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class DiskFullError(OSError):
    """The output device is full (or over quota): nothing can be written; a batch job stops here."""


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(e: BaseException) -> bool:
    """True for an error that means "no space left": ENOSPC / EDQUOT / EFBIG, also when a library wraps it
    (h5py: "errno = 28", numpy: "N requested and M written")."""
    if not isinstance(e, OSError):
        return False
    if isinstance(e, DiskFullError) or e.errno in _FULL:
        return True
    text = str(e)
    return "No space left" in text or "errno = 28" in text or ("requested and" in text and "written" in text) \
        or "Disk quota exceeded" in text


def disk_full_error(path, e: BaseException) -> DiskFullError:
    err = DiskFullError(errno.ENOSPC, f"no space left on the device writing {path} ({e.strerror or e}); outputs "
                                      "written so far are complete, nothing partial was left: free some space (or "
                                      "choose another --out) and re-run the same command to resume")
    err.filename = str(path)
    return err


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` atomically.

    On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else (path.suffix + ".part"),
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from None
        raise


def atomic_write_bytes(path, blob: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(blob)


def atomic_write_h5(path, fill) -> Path:
    """Write an HDF5 file atomically: ``fill(f)`` fills an in-memory ``h5py.File``, whose bytes are then written
    with :func:`atomic_write_bytes` (a full disk gives :class:`DiskFullError`; HDF5 never sees the failure)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        fill(f)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_write_npy(path, array) -> None:
    """``np.save`` to memory, then one atomic write."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def check_writable_dir(name: str, path) -> Path:
    """Create ``path`` if needed and check we can write there; one clear error otherwise."""
    from ._validate import fail

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".invdiff-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        fail(name, "a writable directory", f"{str(path)!r} ({e.strerror or e})")
    return path
