"""`meta-opt data status|fetch`: reports files and folders; fetch downloads MD5-checked files."""

import io
from pathlib import Path

import pytest

from meta_opt import cli
from meta_opt.data import cache, checksums, data_command

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(cache, "DEFAULT_ROOT", tmp_path / "home_cache")
    monkeypatch.delenv(cache.ENV_VAR, raising=False)


def test_status_lists_present_mnist_with_its_folder(capsys, monkeypatch):
    monkeypatch.setattr(cache, "_urlopen", lambda url, timeout: pytest.fail("network used"))
    assert cli.main(["data", "status", "--data-dir", str(SHARED_DATA)]) == 0
    out = capsys.readouterr().out
    assert "mnist: 4/4 files present" in out
    assert "[ok] train-images-idx3-ubyte.gz" in out and str(SHARED_DATA / "mnist") in out
    assert "cifar10: 0/1 files present" in out and "[missing] cifar-10-python.tar.gz" in out
    assert "digits: ok" in out and "text: ok" in out


def test_fetch_downloads_into_data_dir(tmp_path, monkeypatch):
    payload = b"tiny archive"
    spec = checksums.FileSpec(
        "cifar-10-python.tar.gz",
        __import__("hashlib").md5(payload).hexdigest(),
        ("https://example.invalid/c.tar.gz",),
    )
    monkeypatch.setitem(checksums.OFFICIAL_FILES, "cifar10", (spec,))
    monkeypatch.setattr(cache, "_urlopen", lambda url, timeout: io.BytesIO(payload))
    assert cli.main(["data", "fetch", "cifar10", "--data-dir", str(tmp_path)]) == 0
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == payload


def test_fetch_offline_fails_with_instructions(tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise OSError("no route to host")

    monkeypatch.setattr(cache, "_urlopen", offline)
    assert data_command.fetch("fashion_mnist", tmp_path) == 1
    err = capsys.readouterr().err
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in err and str(tmp_path / "fashion_mnist") in err
