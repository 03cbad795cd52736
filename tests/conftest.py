"""Test-wide settings: nothing phones home, Prefect and GX stay offline and project-local."""

import os

import pytest

from liftplus import offline

offline.apply()
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's ops are too small to share; on a busy 2-core machine extra threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
