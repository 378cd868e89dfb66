import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def tmp_store(tmp_path):
    from milr.store import Store

    return Store(tmp_path / "results")


@pytest.fixture
def one_thread():
    """One torch thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): small
    products are fastest so, and a loaded 2-core machine suffers from two spinning pools."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def gauss():
    """The Gaussian task (milr.data.load_dataset("gaussian"))."""
    from milr.data import load_dataset

    return load_dataset("gaussian")
