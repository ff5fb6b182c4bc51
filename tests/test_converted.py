"""The converted copies of a published dataset's images (hpexp.data.converted): a later process maps
them instead of reading and converting the files, with the same values as the book's bytes / 256
read straight from the gzipped IDX files here; a changed file, a full disk, a damaged copy, two
processes at once and the settings that keep no copy."""

from __future__ import annotations

import errno
import gzip
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpexp.data import converted, datasets, splits
from hpexp.data.mnist import load_splits

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def raw_images(folder: Path, name: str) -> np.ndarray:
    """The IDX images as rows of bytes, from the format (16-byte header) rather than hpexp's reader."""
    path = folder / f"{name}.gz"
    content = gzip.decompress(path.read_bytes()) if path.exists() else (folder / name).read_bytes()
    return np.frombuffer(content[16:], np.uint8).reshape(-1, 784)


def new_process() -> None:
    """Forget what this process has read and converted, as a new process would not know it."""
    splits._split.cache_clear()
    datasets._read_idx_cached.cache_clear()
    converted._warned.clear()


@pytest.fixture
def data(mnist_dir, tmp_path, monkeypatch):
    """A copy of MNIST's four files in a folder of the test's own, and a fresh folder of copies."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in MNIST_FILES:
        source = mnist_dir / f"{name}.gz" if (mnist_dir / f"{name}.gz").exists() else mnist_dir / name
        shutil.copy(source, folder / source.name)
    monkeypatch.setenv(converted.ENV_VAR, str(tmp_path / "copies"))
    new_process()
    yield folder
    new_process()


def mapped(x: np.ndarray) -> str | None:
    """The file x's memory is mapped from, if it is."""
    while x is not None and not isinstance(x, np.memmap):
        x = x.base
    return None if x is None else str(x.filename)


def copies(tmp_path: Path) -> list[str]:
    where = tmp_path / "copies" / "mnist"
    return sorted(p.name for p in where.iterdir()) if where.exists() else []


def assert_book_values(got: dict, folder: Path) -> None:
    train, test = raw_images(folder, MNIST_FILES[0]), raw_images(folder, MNIST_FILES[2])
    want = {"train": train[:50_000], "val": train[50_000:], "test": test}
    for split, rows in want.items():
        assert got[split].x.dtype == np.float32
        np.testing.assert_array_equal(got[split].x, rows.astype(np.float32) / np.float32(256))


def test_a_later_process_maps_the_copy_and_reads_no_images_file(data, tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.DEBUG, logger="hpexp"):
        first = load_splits(data)
    assert_book_values(first, data)
    assert len(copies(tmp_path)) == 2  # training and test images, float32
    said = [r.getMessage() for r in caplog.records if "converted once" in r.getMessage()]
    assert len(said) == 2 and all(str(tmp_path / "copies") in line for line in said)  # where, once each
    (name,) = [n for n in copies(tmp_path) if n.startswith("train-images")]
    new_process()
    read = []
    real = datasets.read_bytes
    monkeypatch.setattr(datasets, "read_bytes", lambda path, fix: read.append(path.name) or real(path, fix))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hpexp"):
        second = load_splits(data)
    assert not [r for r in caplog.records if "converted once" in r.getMessage()]
    assert read and not [name for name in read if "images" in name]  # the labels only
    assert_book_values(second, data)
    # training and validation both rows of the training images' copy, mapped, not copied
    assert mapped(second["train"].x) == mapped(second["val"].x) == str(tmp_path / "copies" / "mnist" / name)
    with pytest.raises(ValueError, match="read-only"):
        second["train"].x[0, 0] = 1.0


def test_a_changed_file_gets_a_copy_of_its_own_which_replaces_the_old(data, tmp_path):
    """A file changed (here: touched) is converted again; its old copy is removed, while a process
    that mapped it still reads it (Linux keeps a removed file's pages for their mappings)."""
    load_splits(data, splits=["train"])  # converted, and the copy made
    new_process()
    old = load_splits(data, splits=["train"])["train"].x  # mapped from the copy
    (before,) = copies(tmp_path)
    # the images' file as the fixture copied it: gzipped (CI's) or not (a cache that unpacked it)
    path = next(p for p in (data / f"{MNIST_FILES[0]}.gz", data / MNIST_FILES[0]) if p.exists())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    new_process()
    assert_book_values(load_splits(data), data)
    after = copies(tmp_path)
    assert before not in after and len(after) == 2  # the new training copy, and the test images'
    assert mapped(old) == str(tmp_path / "copies" / "mnist" / before)
    np.testing.assert_array_equal(old, raw_images(data, MNIST_FILES[0])[:50_000] / np.float32(256))


class Failing:
    """A file whose every write raises `error`, as a full disk (ENOSPC) or a Ctrl-C mid-write."""

    def __init__(self, f, error):
        self.f, self.error = f, error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise self.error


def failing_writes(monkeypatch, error: BaseException) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Failing(real_fdopen(fd, *a, **k), error))


def test_a_full_disk_converts_in_memory_with_one_warning(data, tmp_path, monkeypatch, caplog):
    """From its first write on, the copy's file fails with ENOSPC: the splits are still right, no
    temporary file is left, and the folder is named once, however many copies fail."""
    failing_writes(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with caplog.at_level(logging.WARNING, logger="hpexp"):
        got = load_splits(data)
    assert_book_values(got, data)
    assert copies(tmp_path) == []  # neither a copy nor a temporary file
    warnings = [r.getMessage() for r in caplog.records if "converted copy" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert str(tmp_path / "copies" / "mnist") in warnings[0]


def test_a_damaged_copy_is_made_again(data, tmp_path):
    load_splits(data, splits=["test"])
    (name,) = copies(tmp_path)
    copy = tmp_path / "copies" / "mnist" / name
    size = copy.stat().st_size
    with open(copy, "r+b") as f:
        f.truncate(size // 2)
    new_process()
    assert_book_values(load_splits(data), data)
    assert copy.stat().st_size == size


@pytest.mark.parametrize("setting", ["standardize", "off", "verify"])
def test_no_copy_is_kept_where_it_does_not_hold_x(data, tmp_path, monkeypatch, setting):
    """Standardized examples depend on the training split, unverified files may not be the
    dataset's, and HPEXP_CONVERTED_DIR=off asks for none: converted in memory, as before."""
    config = {"name": "mnist", "dir": str(data), "n_train": 1000, "n_validation": 100}
    if setting == "standardize":
        config["preprocess"] = "standardize"
    elif setting == "verify":
        config["verify"] = False
    else:
        monkeypatch.setenv(converted.ENV_VAR, "off")
    got = splits.load(config, splits=["train", "val"])
    assert len(got["train"]) == 1000 and np.all(np.isfinite(got["train"].x))
    assert copies(tmp_path) == []


def test_two_processes_making_the_copies_at_once_agree(data, tmp_path):
    code = (
        "import sys; from hpexp.data.mnist import load_splits; s = load_splits(sys.argv[1]);"
        "print(*(float(s[k].x.sum(dtype='float64')) for k in ('train', 'val', 'test')))"
    )
    env = {**os.environ, converted.ENV_VAR: str(tmp_path / "copies")}
    runs = [
        subprocess.Popen([sys.executable, "-c", code, str(data)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert outputs[0] == outputs[1] and outputs[0].strip()
    assert len(copies(tmp_path)) == 2  # one of each, no temporary file left
    new_process()
    sums = [float(split.x.sum(dtype="float64")) for split in load_splits(data).values()]
    assert [float(v) for v in outputs[0].split()] == sums  # the same values as this process maps


def test_a_killed_writers_temporary_file_is_removed_once_stale(data, tmp_path):
    """A writer killed mid-copy leaves its temporary file (never mapped: only a whole copy is
    renamed into place); the next copy made there removes it once it is older than a writer takes,
    and leaves a live writer's alone."""
    where = tmp_path / "copies" / "mnist"
    where.mkdir(parents=True)
    dead, live = where / ".train-images-x.npy.abc.tmp", where / ".t10k-images-x.npy.def.tmp"
    for left in (dead, live):
        left.write_bytes(b"\x93NUMPY half a copy")
    os.utime(dead, (dead.stat().st_atime, dead.stat().st_mtime - converted.STALE - 1))
    assert_book_values(load_splits(data), data)
    assert not dead.exists() and live.exists()
    assert len([name for name in copies(tmp_path) if not name.startswith(".")]) == 2


def test_ctrl_c_while_a_copy_is_written_leaves_nothing_and_goes_through(data, tmp_path, monkeypatch):
    """An interrupt during the write is not a failure to fall back from: it goes through to the
    command (which reports it), and no temporary file or half copy stays behind."""
    real_fdopen = os.fdopen
    failing_writes(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        load_splits(data, splits=["test"])
    assert copies(tmp_path) == []
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    new_process()
    assert_book_values(load_splits(data), data)
    assert len(copies(tmp_path)) == 2  # made this time
