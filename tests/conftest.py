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


STAGE_LEVEL = ("faults", "flows")
"""Folders whose every test runs real stages, processes or a Prefect API: the slow lane."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(part in STAGE_LEVEL for part in item.path.relative_to(config.rootpath / "tests").parts[:-1]):
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path, config):
    """The fast lane (``-m "not slow"``) does not even import the stage-level folders: every test there is slow."""
    if config.getoption("markexpr") != "not slow" or not collection_path.is_dir():
        return None
    return True if collection_path.parent == config.rootpath / "tests" and collection_path.name in STAGE_LEVEL else None
