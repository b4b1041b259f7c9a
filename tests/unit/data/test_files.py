"""Locating, verifying and downloading raw files; every failure is a one-line, actionable DataError."""

import gzip

import pytest

from digitflow.data import DATASETS, fetch, files_digest, parse_spec
from digitflow.data import files as files_mod
from digitflow.errors import DataError
from tests.fakedata import fake_data_dir, patch_registry, write_fake_datasets


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    return fake_data_dir(tmp_path, monkeypatch)


def error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def never_download(url, dest):
    raise AssertionError(f"downloaded {url} although the file is present")


def test_fetch_returns_the_split_files_in_torchvision_layout(data_dir):
    assert fetch("mnist:train", data_dir, downloader=never_download) == [
        data_dir / "MNIST/raw/train-images-idx3-ubyte.gz",
        data_dir / "MNIST/raw/train-labels-idx1-ubyte.gz",
    ]
    assert fetch(parse_spec("usps:test[:10]"), data_dir, offline=True) == [data_dir / "USPS/usps.t.bz2"]
    assert fetch("fashion-mnist:test", data_dir, offline=True)[0].parent == data_dir / "FashionMNIST/raw"
    assert fetch("kmnist:test", data_dir, offline=True)[0].parent == data_dir / "KMNIST/raw"


def test_only_the_requested_split_is_needed(data_dir):
    for path in (data_dir / "MNIST/raw").glob("train-*"):
        path.unlink()
    assert len(fetch("mnist:test", data_dir, offline=True)) == 2


def test_offline_missing_file_says_what_where_and_how(data_dir):
    (data_dir / "MNIST/raw/train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        fetch("mnist:train[:10]", data_dir, offline=True, downloader=never_download)
    assert error(excinfo) == (
        f"mnist:train needs train-images-idx3-ubyte.gz, not found in {data_dir / 'MNIST/raw'} "
        "(offline: no download); place the official file there or run without --offline"
    )


def test_checksum_mismatch_names_file_checksums_and_fix(data_dir):
    path = data_dir / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"something else entirely"))
    with pytest.raises(DataError) as excinfo:
        fetch("mnist:test", data_dir, offline=True)
    msg = error(excinfo)
    info = DATASETS["mnist"].splits["test"][1]
    assert f"corrupt file {path}" in msg
    assert files_mod.md5sum(path) in msg
    assert info.md5 in msg
    assert info.raw_md5 is not None
    assert info.raw_md5 in msg
    assert "replace it with the official file, or delete it and run without --offline" in msg


def test_truncated_file_is_rejected(data_dir):
    path = data_dir / "FashionMNIST/raw/t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError) as excinfo:
        fetch("fashion-mnist:test", data_dir, offline=True)
    msg = error(excinfo)
    assert str(path) in msg
    assert "does not decompress" in msg
    assert "replace it with the official file" in msg


def test_recompressed_copy_with_matching_raw_content_is_accepted(data_dir):
    path = data_dir / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    official = files_mod.md5sum(path)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345))
    assert files_mod.md5sum(path) != official
    assert fetch("mnist:test", data_dir, offline=True)[0] == path


def test_recompressed_copy_rejected_where_no_raw_md5_is_known(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    write_fake_datasets(data_dir, names=("kmnist",))
    patch_registry(monkeypatch, data_dir, raw_md5=False)
    path = data_dir / "KMNIST/raw/train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=7))
    with pytest.raises(DataError, match=r"corrupt file .*train-labels-idx1-ubyte\.gz: md5 [0-9a-f]{32}, expected"):
        fetch("kmnist:train", data_dir, offline=True)


def test_verification_is_cached_within_the_process(data_dir, monkeypatch):
    calls = []
    real = files_mod.md5sum

    def counting_md5sum(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(files_mod, "md5sum", counting_md5sum)
    fetch("usps:train", data_dir, offline=True)
    fetch("usps:train[:5]", data_dir, offline=True)
    assert len(calls) == 1


def _take_out(data_dir, relpath):
    path = data_dir / relpath
    content = path.read_bytes()
    path.unlink()
    return path, content


def test_download_tries_mirrors_in_turn_and_verifies(data_dir):
    path, content = _take_out(data_dir, "MNIST/raw/train-labels-idx1-ubyte.gz")
    urls = []

    def downloader(url, dest):
        urls.append(url)
        if "mirror-a" in url:
            raise ConnectionError("mirror a is down")
        assert dest.parent == path.parent  # a temp file beside the target
        assert dest != path
        dest.write_bytes(content)

    assert fetch("mnist:train", data_dir, downloader=downloader)[1] == path
    assert path.read_bytes() == content
    assert urls == [f"fake://mirror-a/{path.name}", f"fake://mirror-b/{path.name}"]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files
    fetch("mnist:train", data_dir, downloader=never_download)  # now present: no network


def test_failed_download_leaves_no_partial_file(data_dir):
    path, content = _take_out(data_dir, "USPS/usps.bz2")

    def downloader(url, dest):
        dest.write_bytes(content[:100])  # half a file, then the connection drops
        raise TimeoutError("timed out")

    with pytest.raises(DataError) as excinfo:
        fetch("usps:train", data_dir, downloader=downloader)
    msg = error(excinfo)
    assert msg.startswith(f"usps:train needs usps.bz2, not found in {path.parent} and no mirror could provide it")
    assert "fake://mirror-a/usps.bz2: TimeoutError: timed out" in msg
    assert "place the official file there" in msg
    assert sorted(p.name for p in path.parent.iterdir()) == ["usps.t.bz2"]


def test_corrupt_download_is_rejected_and_removed(data_dir):
    path, content = _take_out(data_dir, "KMNIST/raw/t10k-images-idx3-ubyte.gz")

    def downloader(url, dest):
        dest.write_bytes(content[:-1] + b"!")

    with pytest.raises(DataError, match="corrupt download") as excinfo:
        fetch("kmnist:test", data_dir, downloader=downloader)
    assert str(path.parent) in error(excinfo)
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_default_downloader_failure_is_reported(data_dir):
    (data_dir / "USPS/usps.t.bz2").unlink()  # registry URLs are fake:// here: fails without a network
    with pytest.raises(DataError, match="unknown url type"):
        fetch("usps:test", data_dir)


def test_download_into_a_missing_dir_creates_it(tmp_path, monkeypatch):
    source = tmp_path / "src"
    write_fake_datasets(source, names=("usps",))
    patch_registry(monkeypatch, source)
    content = (source / "USPS/usps.t.bz2").read_bytes()
    target = tmp_path / "fresh"

    def downloader(url, dest):
        dest.write_bytes(content)

    paths = fetch("usps:test", target, downloader=downloader)
    assert paths == [target / "USPS/usps.t.bz2"]
    assert paths[0].read_bytes() == content


def test_files_digest_tracks_content_and_order(data_dir):
    a, b = fetch("mnist:test", data_dir, offline=True)
    digest = files_digest([a, b])
    assert len(digest) == 64
    assert files_digest([a, b]) == digest
    assert files_digest([b, a]) != digest
    b.write_bytes(b.read_bytes() + b"x")
    assert files_digest([a, b]) != digest


def test_default_downloader_streams_and_reports_progress(tmp_path):
    from digitflow.data.files import urllib_download

    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 20_000)  # 5.1 MB: several 1 MB chunks
    seen = []
    urllib_download(
        source.as_uri(), tmp_path / "copy.bin", on_progress=lambda url, done, total: seen.append((done, total))
    )
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert seen[-1] == (5_120_000, 5_120_000)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) >= 5
