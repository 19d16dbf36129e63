"""Dataset loaders: real MNIST from ../shared/data, self-made Fashion-MNIST / CIFAR-10 files,
checksum enforcement, folder resolution, atomic downloads, and no network access."""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from meta_opt.data import cache, idx, loaders
from meta_opt.data.cache import ChecksumError, DataUnavailableError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Any network access fails the test; the default cache folder is a fresh tmp folder."""

    def forbidden(url, timeout):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(cache, "_urlopen", forbidden)
    monkeypatch.setattr(cache, "DEFAULT_ROOT", tmp_path / "home_cache")
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    loaders._load_cached.cache_clear()


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX written by hand (independent of meta_opt.data.idx): uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train=12, n_test=5, seed=0) -> dict:
    """Small Fashion-MNIST files in the official format; returns their checksum table."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) * 3) % 10,
    }
    for name, arr in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(arr)))
    return {name: md5(folder / name) for name in arrays}, arrays


def write_cifar(folder: Path, per_batch=3, seed=0):
    """A small cifar-10-python.tar.gz (same member names and pickle layout)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = list(rng.integers(0, 10, per_batch).tolist())
            batches[name] = (data, labels)
            payload = pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"})
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path = folder / "cifar-10-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return {path.name: md5(path)}, batches


def test_mnist_from_shared_data_has_official_sizes_and_class_counts():
    folder = SHARED_DATA / "mnist"
    assert folder.is_dir(), (
        f"MNIST files expected in {folder.resolve()} (../shared/data/mnist next to the repo); "
        "copy the four official .gz files there"
    )
    for spec in cache.file_specs("mnist"):
        assert md5(folder / spec.name) == spec.md5
    d = loaders.load("mnist", data_dir=SHARED_DATA)
    assert d["train"]["image"].shape == (60000, 28, 28, 1)
    assert d["test"]["image"].shape == (10000, 28, 28, 1)
    assert d["train"]["image"].dtype == np.uint8 and d["train"]["label"].dtype == np.int32
    assert np.bincount(d["train"]["label"]).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(d["test"]["label"]).tolist() == MNIST_TEST_COUNTS
    assert d["train"]["image"].max() == 255 and d["train"]["image"].min() == 0
    # Identical calls share one (read-only) copy.
    assert loaders.load("mnist", data_dir=SHARED_DATA) is d
    assert not d["train"]["image"].flags.writeable


def test_fashion_mnist_small_files_load_exactly(tmp_path):
    sums, arrays = write_fashion(tmp_path / "fashion_mnist")
    d = loaders.load("fashion_mnist", data_dir=tmp_path, checksums=sums)
    np.testing.assert_array_equal(d["train"]["image"][..., 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(d["train"]["label"], arrays["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(d["test"]["image"][..., 0], arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(d["test"]["label"], arrays["t10k-labels-idx1-ubyte.gz"])


def test_cifar10_small_archive_loads_in_nhwc_order(tmp_path):
    sums, batches = write_cifar(tmp_path / "cifar10")
    d = loaders.load("cifar10", data_dir=tmp_path, checksums=sums)
    assert d["train"]["image"].shape == (15, 32, 32, 3)
    assert d["test"]["image"].shape == (3, 32, 32, 3)
    data, labels = batches["data_batch_2"]
    img = d["train"]["image"][3]  # first image of the second batch
    # Row layout: 1024 red values, then green, then blue, each row-major 32x32.
    np.testing.assert_array_equal(img[:, :, 0], data[0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(img[:, :, 2], data[0, 2048:].reshape(32, 32))
    assert d["train"]["label"][3] == labels[0]
    np.testing.assert_array_equal(d["test"]["label"], batches["test_batch"][1])


def test_corrupted_file_gives_checksum_error_and_is_never_used(tmp_path):
    sums, _ = write_fashion(tmp_path / "fashion_mnist")
    path = tmp_path / "fashion_mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as e:
        loaders.load("fashion_mnist", data_dir=tmp_path, checksums=sums, download=False)
    msg = str(e.value)
    assert "train-labels-idx1-ubyte.gz" in msg and sums[path.name] in msg and md5(path) in msg


def test_official_checksums_reject_self_made_files(tmp_path):
    write_fashion(tmp_path / "fashion_mnist")
    with pytest.raises(ChecksumError, match="8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        loaders.load("fashion_mnist", data_dir=tmp_path, download=False)


def test_missing_files_offline_error_names_file_md5_url_and_folder(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(cache, "_urlopen", offline)
    with pytest.raises(DataUnavailableError) as e:
        loaders.load("cifar10", data_dir=tmp_path)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg
    assert "c58f30108f718f92721af3b95e74349a" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "cifar10") in msg
    assert "network unreachable" in msg
    assert not list((tmp_path / "cifar10").glob("*")), "no partial file may be left behind"


def test_download_is_md5_checked_and_atomic(tmp_path, monkeypatch):
    sums, _ = write_cifar(tmp_path / "src")
    good = (tmp_path / "src" / "cifar-10-python.tar.gz").read_bytes()
    served = {"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": good}
    monkeypatch.setattr(cache, "_urlopen", lambda url, timeout: io.BytesIO(served[url]))
    d = loaders.load("cifar10", data_dir=tmp_path / "dst", checksums=sums)
    assert d["train"]["image"].shape == (15, 32, 32, 3)
    assert (
        md5(tmp_path / "dst" / "cifar10" / "cifar-10-python.tar.gz")
        == sums["cifar-10-python.tar.gz"]
    )
    # A download with the wrong MD5 is discarded, never moved into place.
    loaders._load_cached.cache_clear()
    served[next(iter(served))] = good[:-10]
    with pytest.raises(DataUnavailableError, match="MD5"):
        loaders.load("cifar10", data_dir=tmp_path / "other", checksums=sums)
    assert not list((tmp_path / "other" / "cifar10").glob("*"))


def test_folder_order_explicit_then_env_then_default(tmp_path, monkeypatch):
    sums, _ = write_fashion(tmp_path / "env" / "fashion_mnist", seed=1)
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
    assert cache.candidate_dirs("mnist")[0] == tmp_path / "env" / "mnist"
    assert cache.candidate_dirs("mnist")[-1] == tmp_path / "home_cache" / "mnist"
    from_env = loaders.load("fashion_mnist", checksums=sums, download=False)
    sums2, _ = write_fashion(tmp_path / "explicit" / "fashion_mnist", seed=2)
    from_dir = loaders.load("fashion_mnist", data_dir=tmp_path / "explicit", checksums=sums2)
    assert not np.array_equal(from_env["train"]["image"], from_dir["train"]["image"])
    # The env folder is still searched after an explicit folder lacking the files.
    again = loaders.load("fashion_mnist", data_dir=tmp_path / "empty", checksums=sums)
    np.testing.assert_array_equal(again["train"]["image"], from_env["train"]["image"])


def test_checksum_table_rejects_unknown_file_names():
    with pytest.raises(KeyError, match="train-images-idx3-ubyte.gz"):
        cache.file_specs("mnist", {"train-images.gz": "0" * 32})


def test_digits_and_text_load_offline():
    d = loaders.load("digits")
    assert d["train"]["image"].shape == (1497, 8, 8, 1) and d["test"]["image"].shape[0] == 300
    assert d["train"]["image"].max() == 255
    assert set(np.unique(d["test"]["label"]).tolist()) == set(range(10))
    t = loaders.load("text")
    assert t["train"]["tokens"].dtype == np.uint8
    n_train, n_test = len(t["train"]["tokens"]), len(t["test"]["tokens"])
    assert abs(n_test / (n_train + n_test) - 0.1) < 1e-3
    assert b"topics" in t["train"]["tokens"][:2000].tobytes()


def test_idx_round_trip_and_header_errors(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7
    idx.write_idx(tmp_path / "a.idx.gz", a)
    b = idx.read_idx(tmp_path / "a.idx.gz")
    assert b.dtype == np.int32 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="not an IDX file"):
        idx.parse_idx(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="header says shape"):
        idx.parse_idx(idx_bytes(np.zeros((2, 2)))[:-1])


def test_unknown_dataset_lists_known_names():
    with pytest.raises(KeyError, match="digits, mnist, fashion_mnist, cifar10, text"):
        loaders.load("imagenet")
