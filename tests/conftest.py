import os

import pytest
import torch

# 2-core CI machines: oversubscribed OpenMP threads make torch ~10x slower (deepinv audit, timing caveat).
torch.set_num_threads(int(os.environ.get("INVDIFF_TEST_THREADS", "1")))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
