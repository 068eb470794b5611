import os

import pytest
import torch

# 2-core CI machines: oversubscribed OpenMP threads make torch ~10x slower (deepinv audit, timing caveat).
torch.set_num_threads(int(os.environ.get("INVDIFF_TEST_THREADS", "1")))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def assert_close_f32(actual: torch.Tensor, expected: torch.Tensor, rel: float = 2e-5) -> None:
    """Two float32 evaluations of the same network / formula by different operation orders agree to round-off:
    max |actual - expected| <= rel * max(1, max |expected|). Round-off grows with the output's magnitude and the
    network's depth and differs between CPUs / BLAS builds, so a fixed ``atol`` on outputs of size ~3 is too tight
    (1.4e-5 seen on one x86 machine against atol 1e-5). Format / conversion bugs give errors >= 1e-2."""
    err = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


def patch_full_disk(monkeypatch, writer: str, hit):
    """Make ``invdiff.io_utils.<writer>`` (``atomic_write_bytes`` / ``atomic_write_text``) fail like a full disk for
    paths where ``hit(path)`` is true: half the content lands in the temporary file, then ENOSPC. Returns the real
    writer (to restore: ``monkeypatch.setattr(io_utils, writer, real)``)."""
    import errno

    from invdiff import io_utils

    real = getattr(io_utils, writer)
    mode = "wb" if writer.endswith("bytes") else "w"

    def full_disk(path, content):
        if hit(path):
            with io_utils.atomic_path(path) as tmp:
                with open(tmp, mode) as f:
                    f.write(content[: len(content) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, content)

    monkeypatch.setattr(io_utils, writer, full_disk)
    return real
