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
