"""milr.data.download and `milr download` against a loopback HTTP server on 127.0.0.1 serving
small files written here in the real formats (IDX gz, the CIFAR-10 binary tar.gz layout):
checksums, atomic writes, skipping valid files, mirrors, offline, wrong checksum, a server
that drops the connection half way, and the loaders finding the result without arguments."""
import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading

import numpy as np
import pytest

from milr import cli
from milr import data as D


def idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


def mnist_like_files(n_train=30, n_val=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_gz(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n_val, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_gz(np.arange(n_val) % 10),
    }


def cifar_archive(n=3, seed=1) -> bytes:
    """A tar.gz laid out like cifar-10-binary.tar.gz (folder cifar-10-batches-bin/, six .bin
    batches of 3073-byte records, plus the archive's two other files)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        add("batches.meta.txt", b"airplane\nautomobile\n")
        for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            recs = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))],
                                  axis=1).astype(np.uint8)
            add(f, recs.tobytes())
        add("readme.html", b"<html></html>")
    return buf.getvalue()


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


class Server:
    """Serves ``files`` (path -> bytes) under ``/<prefix>/``; paths in ``drop`` send the full
    Content-Length, half the body, then close the connection. Counts requests per path."""

    def __init__(self):
        self.files, self.drop, self.hits = {}, set(), {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in outer.drop:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def fake_mnist(monkeypatch, server):
    """MNIST's download entry pointed at the loopback server with the test files' md5s."""
    files = mnist_like_files()
    for name, body in files.items():
        server.files[f"/a/{name}"] = body
    monkeypatch.setitem(D.DOWNLOADS, "mnist", {"mirrors": [server.url + "/a/"],
                                               "files": {k: md5(v) for k, v in files.items()}})
    return files


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def test_download_then_load_without_arguments(tmp_path, monkeypatch, server, fake_mnist):
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "data"))
    dest = D.download("mnist")
    assert dest == tmp_path / "data" / "mnist"
    for name, body in fake_mnist.items():
        assert (dest / name).read_bytes() == body
    assert sorted(p.name for p in dest.iterdir()) == sorted(fake_mnist)  # no temporary left
    ds = D.load_dataset("mnist")  # no data_dir: found where the download put it
    assert ds.x_train.shape == (30, 784) and ds.x_val.shape == (10, 784)
    assert {s["sha256"] for s in ds.sources} == {hashlib.sha256(b).hexdigest()
                                                 for b in fake_mnist.values()}


def test_default_download_dir_is_searched(tmp_path, monkeypatch):
    monkeypatch.delenv("MILR_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "RAW_DIR", tmp_path / "raw")
    assert D.default_data_dir() == tmp_path / "raw"
    for name in ("mnist", "fashion-mnist", "cifar10"):
        assert D.default_data_dir() / name in D.search_dirs(name)
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "env"))
    assert D.default_data_dir() / "mnist" in D.search_dirs("mnist")


def test_valid_files_are_skipped_and_bad_ones_replaced(tmp_path, server, fake_mnist):
    D.download("mnist", tmp_path)
    assert all(v == 1 for v in server.hits.values()) and len(server.hits) == 4
    D.download("mnist", tmp_path)  # all present and valid: no request
    assert all(v == 1 for v in server.hits.values())
    bad = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"corrupt")
    lines = []
    D.download("mnist", tmp_path, report=lines.append)
    assert bad.read_bytes() == fake_mnist[bad.name]
    assert server.hits["/a/train-labels-idx1-ubyte.gz"] == 2
    assert any("removed (wrong md5)" in ln for ln in lines)
    assert sum("present and valid" in ln for ln in lines) == 3


def test_wrong_checksum_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, server, fake_mnist):
    files = dict(D.DOWNLOADS["mnist"]["files"])
    files["t10k-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(D.DOWNLOADS, "mnist", {**D.DOWNLOADS["mnist"], "files": files})
    with pytest.raises(D.DownloadError) as e:
        D.download("mnist", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "t10k-images-idx3-ubyte.gz" in msg and "md5" in msg
    assert "0" * 32 in msg
    left = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in left and not any(".part" in n for n in left)


def test_connection_dropped_half_way(tmp_path, server, fake_mnist):
    server.drop.add("/a/train-images-idx3-ubyte.gz")
    with pytest.raises(D.DownloadError) as e:
        D.download("mnist", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg
    n = len(fake_mnist["train-images-idx3-ubyte.gz"])
    assert f"connection closed after {n // 2} of {n} bytes" in msg
    assert not any(p.name.startswith("train-images") or ".part" in p.name
                   for p in (tmp_path / "mnist").iterdir())


def test_next_mirror_is_tried(tmp_path, monkeypatch, server, fake_mnist):
    # first mirror: nothing listening; second: 404 for everything; third: the files
    entry = {**D.DOWNLOADS["mnist"],
             "mirrors": [closed_port_url(), server.url + "/missing/", server.url + "/a"]}
    monkeypatch.setitem(D.DOWNLOADS, "mnist", entry)
    D.download("mnist", tmp_path)
    assert server.hits["/missing/train-images-idx3-ubyte.gz"] == 1
    assert (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes() == \
        fake_mnist["t10k-labels-idx1-ubyte.gz"]


def test_offline_is_one_clear_line(tmp_path, fake_mnist):
    url = closed_port_url()
    with pytest.raises(D.DownloadError) as e:
        D.download("mnist", tmp_path, mirrors=[url])
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "network" in msg
    assert not (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_cifar10_archive_extracted_and_loaded(tmp_path, monkeypatch, server):
    archive = cifar_archive()
    server.files["/c/cifar-10-binary.tar.gz"] = archive
    monkeypatch.setitem(D.DOWNLOADS, "cifar10", {"mirrors": [server.url + "/c/"],
                                                 "files": {"cifar-10-binary.tar.gz": md5(archive)}})
    dest = D.download("cifar10", tmp_path)
    batches = sorted(p.name for p in (dest / "cifar-10-batches-bin").iterdir())
    assert batches == sorted([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        want = tar.extractfile("cifar-10-batches-bin/test_batch.bin").read()
    assert (dest / "cifar-10-batches-bin" / "test_batch.bin").read_bytes() == want
    ds = D.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (15, 3072) and ds.x_val.shape == (3, 3072)
    lines = []
    D.download("cifar10", tmp_path, report=lines.append)  # second run: nothing fetched
    assert server.hits["/c/cifar-10-binary.tar.gz"] == 1
    assert sum("present" in ln for ln in lines) == 7


def test_unknown_name():
    with pytest.raises(ValueError, match="name='svhn'.*allowed: mnist, fashion-mnist, cifar10"):
        D.download("svhn")


def test_cli_download(tmp_path, capsys, server, fake_mnist):
    assert cli.main(["download", "mnist", "--dir", str(tmp_path)]) == cli.EXIT_OK
    out = capsys.readouterr()
    assert str(tmp_path / "mnist") in out.out and out.err.count("downloaded:") == 4
    rc = cli.main(["download", "mnist", "--dir", str(tmp_path / "x"), "--mirror",
                   closed_port_url()])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == cli.EXIT_FAILED and len(err) == 1
    assert err[0].startswith("milr download: error: download mnist: could not get")


def test_published_checksums_are_the_known_ones():
    # torchvision's / the CIFAR-10 page's values: a typo here would reject every real file
    assert D.DOWNLOADS["mnist"]["files"]["train-images-idx3-ubyte.gz"] == \
        "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert D.DOWNLOADS["fashion-mnist"]["files"]["t10k-labels-idx1-ubyte.gz"] == \
        "bb300cfdad3c16e7a12a480ee83cd310"
    assert D.DOWNLOADS["cifar10"]["files"] == {
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}
    for entry in D.DOWNLOADS.values():
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in entry["files"].values())


def test_default_dir_download_is_found_by_the_loader(tmp_path, monkeypatch, server, fake_mnist):
    monkeypatch.delenv("MILR_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "RAW_DIR", tmp_path / "raw")
    D._load_cached.cache_clear()
    try:
        assert D.download("mnist") == tmp_path / "raw" / "mnist"
        ds = D.load_dataset("mnist")
        assert ds.sources[0]["path"] == str(tmp_path / "raw" / "mnist" / "train-images-idx3-ubyte.gz")
    finally:
        D._load_cached.cache_clear()


def test_not_found_message_names_the_download_that_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path))
    for name in ("mnist", "fashion-mnist", "cifar10"):
        with pytest.raises(D.DataNotFoundError) as e:
            D.load_dataset(name)
        assert f"milr download {name}" in str(e.value)
        assert f"milr.data.download({name!r})" in str(e.value)
    assert callable(D.download) and set(D.DOWNLOADS) == {"mnist", "fashion-mnist", "cifar10"}
