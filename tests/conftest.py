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

