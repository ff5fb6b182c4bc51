"""Datasets beyond MNIST: the generic IDX and NPZ loaders on small files written here, splits,
preprocessing, checksums and their advice, networks sized by the data, and Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from hpexp.data import datasets, splits
from hpexp.data.files import DataError
from hpexp.train.runner import ConfigError, compose, data_info, run, validate

FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written from the format's definition."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.tobytes()


def make_data(rng: np.random.Generator, n: int, shape: tuple[int, ...], classes: int) -> tuple:
    """Images (n, *shape) of bytes whose mean brightness tells the class (so a network can learn it)."""
    y = rng.integers(0, classes, n).astype(np.uint8)
    y[:classes] = np.arange(classes)  # every class present
    x = rng.integers(0, 60, (n, *shape)) + (y * (180 // classes)).reshape(n, *([1] * len(shape)))
    return x.astype(np.uint8), y


def write_idx(folder: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], gz: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, (x, y) in parts.items():
        for kind, array in (("images", x), ("labels", y)):
            name = f"{split}-{kind}.idx" + (".gz" if gz else "")
            content = idx_bytes(array)
            (folder / name).write_bytes(gzip.compress(content) if gz else content)
            files[f"{split}_{kind}"] = name
    return files


def idx_config(folder: Path, files: dict, **extra) -> dict:
    return {"name": "idx", "dir": str(folder), "files": files, **extra}


def npz_config(path: Path, **extra) -> dict:
    return {"name": "npz", "path": str(path), "scale": 1.0, **extra}


SHAPES = [((28, 28), (1, 28, 28)), ((3, 12, 12), (3, 12, 12)), ((20,), (20,))]


@pytest.mark.parametrize(("stored", "shape"), SHAPES)
@pytest.mark.parametrize("classes", [3, 10])
@pytest.mark.parametrize("with_val", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader(tmp_path: Path, stored, shape, classes: int, with_val: bool, gz: bool) -> None:
    rng = np.random.default_rng(classes)
    parts = {"train": make_data(rng, 50, stored, classes), "test": make_data(rng, 20, stored, classes)}
    if with_val:
        parts["val"] = make_data(rng, 15, stored, classes)
    config = idx_config(tmp_path, write_idx(tmp_path, parts, gz), scale=255.0)
    info = datasets.describe(config)
    assert (info.shape, info.n_classes, info.n_train_official) == (shape, classes, 50)
    got = splits.load(config)
    (xt, yt), (xs, ys) = parts["train"], parts["test"]
    if with_val:
        train_rows, (xv, yv) = slice(None), parts["val"]
    else:  # the default holdout: the last 10% of the training data
        train_rows, xv, yv = slice(0, 45), xt[45:], yt[45:]
    for split, x, y in (("train", xt[train_rows], yt[train_rows]), ("val", xv, yv), ("test", xs, ys)):
        assert got[split].x.shape == (len(y), int(np.prod(shape)))
        np.testing.assert_array_equal(got[split].x * np.float32(255.0), x.reshape(len(x), -1))
        np.testing.assert_array_equal(got[split].y, y)


@pytest.mark.parametrize(("stored", "shape"), SHAPES)
@pytest.mark.parametrize("classes", [3, 10])
@pytest.mark.parametrize("with_val", [False, True])
def test_npz_loader(tmp_path: Path, stored, shape, classes: int, with_val: bool) -> None:
    rng = np.random.default_rng(classes)
    (xt, yt), (xs, ys) = make_data(rng, 40, stored, classes), make_data(rng, 10, stored, classes)
    arrays = {"x_train": xt / 7, "y_train": yt.astype(np.int32), "x_test": xs / 7, "y_test": ys}
    if with_val:
        xv, yv = make_data(rng, 12, stored, classes)
        arrays |= {"x_val": xv / 7, "y_val": yv}
    np.savez(tmp_path / "d.npz", **arrays)
    config = npz_config(tmp_path / "d.npz", holdout=8)
    info = datasets.describe(config)
    assert (info.shape, info.n_classes) == (shape, classes)
    got = splits.load(config, dtype="float64")
    val_x = arrays["x_val"] if with_val else arrays["x_train"][32:]
    train_x = arrays["x_train"] if with_val else arrays["x_train"][:32]
    np.testing.assert_array_equal(got["train"].x, train_x.reshape(len(train_x), -1))
    np.testing.assert_array_equal(got["val"].x, val_x.reshape(len(val_x), -1))
    np.testing.assert_array_equal(got["test"].y, ys)
    assert got["train"].y.dtype == np.int64


def small_npz(path: Path, channels: int = 3, side: int = 12, classes: int = 3, n: int = 300) -> Path:
    rng = np.random.default_rng(0)
    shape = (channels, side, side)
    (xt, yt), (xs, ys) = make_data(rng, n, shape, classes), make_data(rng, 60, shape, classes)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


@pytest.mark.parametrize("network", ["mlp30", "conv1"])
def test_networks_train_on_3_channel_12x12_npz_without_naming_its_shape(tmp_path: Path, network: str) -> None:
    path = small_npz(tmp_path / "rgb.npz")
    cfg = compose(
        [
            "data=npz",
            f"data.path={path}",
            "data.scale=255.0",
            f"network={network}",
            "network.fc=10",
            "train.epochs=3",
            "train.batch_size=10",
            "optimizer.eta=0.5",
            "train.monitor=[train,val,test]",
        ]
        if network == "conv1"
        else [
            "data=npz",
            f"data.path={path}",
            "data.scale=255.0",
            f"network={network}",
            "train.epochs=3",
            "train.batch_size=10",
            "optimizer.eta=0.5",
            "train.monitor=[train,val,test]",
        ]
    )
    out = run(cfg, tmp_path / "run", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["data"]["shape"] == [3, 12, 12] and summary["data"]["n_classes"] == 3
    assert summary["data"]["n_train"] == 270 and summary["data"]["n_validation"] == 30
    assert summary["final"]["test_accuracy"] > 0.6  # chance is 1/3
    saved = (out / "config.yaml").read_text()
    assert "input:\n  - 3\n  - 12\n  - 12" in saved if network == "conv1" else "- 432" in saved


def test_sizes_checked_against_the_data(tmp_path: Path) -> None:
    path = small_npz(tmp_path / "rgb.npz")
    cfg = compose(["data=npz", f"data.path={path}", "network.sizes=[784,30,10]"])
    message = r"does not match npz: the input must have 432 values \(shape \[3, 12, 12\]\) and the last"
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
    cfg = compose(["data=npz", f"data.path={path}", "network.sizes=[432,30,3]"])
    validate(cfg)


def test_mnist_sizes_still_written_by_hand() -> None:
    assert list(compose(["network=mlp30"]).network.sizes) == [784, 30, 10]
    assert list(compose(["network=mlp30", "network.hidden=[50,20]"]).network.sizes) == [784, 50, 20, 10]
    with pytest.raises(ConfigError, match="does not match MNIST"):
        validate(compose(["network.sizes=[784,30,9]"]))


# --- bad data ------------------------------------------------------------------------------------


def test_corrupt_and_misshapen_files_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    parts = {"train": make_data(rng, 30, (8, 8), 3), "test": make_data(rng, 10, (8, 8), 3)}
    files = write_idx(tmp_path / "a", parts)
    config = idx_config(tmp_path / "a", files)
    # labels that do not match the images
    (tmp_path / "a" / files["train_labels"]).write_bytes(idx_bytes(parts["train"][1][:29]))
    with pytest.raises(DataError, match=r"idx train labels has shape \(29,\), but there are 30 examples"):
        datasets.describe(config)
    # a truncated file
    (tmp_path / "a" / files["train_labels"]).write_bytes(idx_bytes(parts["train"][1])[:-3])
    with pytest.raises(DataError, match="has 35 bytes but its header .* needs 38: the file is truncated"):
        splits.load(config)
    (tmp_path / "a" / files["train_labels"]).write_bytes(idx_bytes(parts["train"][1]))
    # test images of another shape: refused when the test split is read, not before
    (tmp_path / "a" / files["test_images"]).write_bytes(idx_bytes(parts["test"][0][:, :7, :]))
    assert set(splits.load(config, splits=["train", "val"])) == {"train", "val"}
    message = r"test images have examples of shape \(7, 8\), but the training examples are \(1, 8, 8\)"
    with pytest.raises(DataError, match=message):
        splits.load(config, splits=["test"])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y_train": np.array([0, 1, -1] * 10)}, "negative label -1"),
        ({"y_train": np.linspace(0, 2, 30)}, "must hold integer class labels"),
        ({"x_train": np.zeros((30, 2, 2, 2, 2))}, r"has shape \(30, 2, 2, 2, 2\): expected \(n, features\)"),
        ({"x_val": np.zeros((5, 16))}, "only one of x_val, y_val"),
        ({"y_test": np.array([0, 1, 5] * 4)}, r"label 5, but data.n_classes = 3 allows 0..2"),
        ({"x_train": np.full((30, 16), np.nan)}, "NaN or infinite"),
    ],
)
def test_bad_npz_arrays_are_refused_clearly(tmp_path: Path, arrays: dict, message: str) -> None:
    base = {
        "x_train": np.ones((30, 16)),
        "y_train": np.array([0, 1, 2] * 10),
        "x_test": np.ones((12, 16)),
        "y_test": np.array([0, 1, 2] * 4),
    }
    np.savez(tmp_path / "d.npz", **(base | arrays))
    with pytest.raises(DataError, match=message):
        splits.load(npz_config(tmp_path / "d.npz"))


def test_npz_missing_array_and_missing_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_train=np.ones((4, 2)), y_train=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"has no array x_test \(it holds \['x_train', 'y_train'\]\)"):
        splits.load(npz_config(tmp_path / "d.npz", holdout=2))
    with pytest.raises(DataError, match="data.path = .*absent.npz is not a file"):
        datasets.describe(npz_config(tmp_path / "absent.npz"))


def test_sha256_map_verify_false_and_the_advice(tmp_path: Path) -> None:
    path = small_npz(tmp_path / "d.npz", n=40)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert datasets.describe(npz_config(path, sha256={"d.npz": good})).checksums == "verified"
    bad = {"d.npz": "0" * 64}
    with pytest.raises(DataError, match="fails its checksum: expected sha256 0000") as error:
        datasets.describe(npz_config(path, sha256=bad))
    assert "delete" not in str(error.value) and "data.verify=false skips them" in str(error.value)
    info = datasets.describe(npz_config(path, sha256=bad, verify=False))
    assert info.checksums == "off (data.verify=false)"
    # a run records it in summary.json
    cfg = compose(
        [
            "data=npz",
            f"data.path={path}",
            "+data.sha256={d.npz: '" + "0" * 64 + "'}",
            "data.verify=false",
            "network=linear",
            "train.epochs=1",
        ]
    )
    out = run(cfg, tmp_path / "run", progress=False)
    data = json.loads((out / "summary.json").read_text())["data"]
    assert data["verify"] is False and data["checksums"] == "off (data.verify=false)"


def test_published_file_under_a_user_dir_is_never_to_be_deleted(tmp_path: Path) -> None:
    mnist = datasets.MNIST
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, _ in mnist.files.values():
        (folder / name).write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    config = {"name": "mnist", "dir": str(folder)}
    with pytest.raises(DataError, match="fails its checksum") as error:
        splits.load(config, splits=["train"])
    assert "delete" not in str(error.value) and "data.verify=false" in str(error.value)
    cached = datasets.Found(folder, datasets.CACHE, "mnist")
    assert "delete it and run `hpexp data fetch mnist`" in cached.fix
    system = datasets.Found(folder, datasets.SYSTEM, "fashion_mnist", package="dataset-fashion-mnist")
    assert "apt-get install --reinstall dataset-fashion-mnist" in system.fix and "delete" not in system.fix


# --- splits and preprocessing --------------------------------------------------------------------


def test_holdout_count_fraction_and_shuffled(tmp_path: Path) -> None:
    path = small_npz(tmp_path / "d.npz", n=100)
    x = np.load(path)["x_train"].reshape(100, -1)
    assert len(splits.load(npz_config(path, holdout=0.25), splits=["val"])["val"]) == 25
    assert len(splits.load(npz_config(path, holdout=7), splits=["val"])["val"]) == 7
    config = npz_config(path, holdout=20, holdout_order="shuffled", holdout_seed=3)
    got = splits.load(config, splits=["train", "val"], dtype="float64")
    rows = {tuple(r) for r in x}
    assert len(rows) == 100  # distinct rows, so membership identifies them
    train, val = {tuple(r) for r in got["train"].x}, {tuple(r) for r in got["val"].x}
    assert len(train) == 80 and len(val) == 20 and not train & val and train | val == rows
    assert val != {tuple(r) for r in x[80:]}  # not the last part
    again = splits.load({**config, "n_train": 10}, splits=["val"], dtype="float64")["val"].x
    np.testing.assert_array_equal(again, got["val"].x)  # the seed fixes the part
    other = splits.load({**config, "holdout_seed": 4}, splits=["val"], dtype="float64")["val"].x
    assert not np.array_equal(other, got["val"].x)
    with pytest.raises(ValueError, match=r"data.holdout = 100 leaves 0 of 100"):
        splits.load(npz_config(path, holdout=100))
    with pytest.raises(ValueError, match=r"data.n_train must be an integer in 1..90, got 91"):
        splits.load(npz_config(path, n_train=91))


def test_standardization_uses_the_training_split_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x_train = rng.normal(3.0, 2.0, (60, 5))
    y = np.array([0, 1] * 30)
    x_val, x_test = rng.normal(0, 1, (10, 5)), rng.normal(0, 1, (10, 5))
    results = []
    for shift in (0.0, 100.0):  # validation and test moved far away: nothing of the train split may change
        path = tmp_path / f"d{shift}.npz"
        np.savez(
            path,
            x_train=x_train,
            y_train=y,
            x_val=x_val + shift,
            y_val=y[:10],
            x_test=x_test + shift,
            y_test=y[:10],
        )
        results.append(splits.load(npz_config(path, preprocess="standardize", n_train=50), dtype="float64"))
    first = x_train[:50]  # n_train: the statistics come from the examples trained on
    mean, std = first.mean(axis=0), first.std(axis=0)
    for got, shift in zip(results, (0.0, 100.0), strict=True):
        np.testing.assert_allclose(got["train"].x, (first - mean) / std)
        np.testing.assert_allclose(got["val"].x, (x_val + shift - mean) / std)
        np.testing.assert_allclose(got["test"].x, (x_test + shift - mean) / std)
    np.testing.assert_allclose(results[0]["train"].x.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(results[0]["train"].x.std(axis=0), 1)


def test_standardize_keeps_constant_features_finite(tmp_path: Path) -> None:
    x = np.zeros((20, 3))
    x[:, 1] = np.arange(20)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(20) % 2, x_test=x, y_test=np.arange(20) % 2)
    got = splits.load(npz_config(tmp_path / "d.npz", preprocess="standardize"))
    assert np.all(np.isfinite(got["train"].x)) and np.all(got["train"].x[:, 0] == 0)


# --- Fashion-MNIST -------------------------------------------------------------------------------


def test_fashion_mnist_is_not_read_from_mnist_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HPEXP_DATA_DIR", str(tmp_path / "mnist-here"))  # MNIST's variable
    monkeypatch.setenv("HPEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HPEXP_FASHION_MNIST_DIR", raising=False)
    found = None
    try:
        found = datasets.find_dir(datasets.FASHION_MNIST, download=False)
    except DataError as e:
        assert "No Fashion-MNIST data found" in str(e) and "HPEXP_FASHION_MNIST_DIR" in str(e)
    if found is not None:
        assert found.path == FASHION and found.origin == datasets.SYSTEM
    info = data_info(compose(["data=fashion_mnist"]))
    assert info.shape == (1, 28, 28) and info.n_classes == 10 and info.class_names[9] == "Ankle boot"


needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)


@needs_fashion
def test_debian_fashion_mnist_verifies_and_is_balanced() -> None:
    lines = datasets.verify(datasets.FASHION_MNIST, FASHION)
    names = [f"{name}.gz" for name, _ in datasets.FASHION_MNIST.files.values()]
    assert [line.split()[1] for line in lines] == names
    raw = datasets.read_arrays({"name": "fashion_mnist", "dir": str(FASHION)}, datasets.KEYS)
    assert np.bincount(raw["train_labels"]).tolist() == [6000] * 10  # the paper: 6,000 per class
    assert np.bincount(raw["test_labels"]).tolist() == [1000] * 10
    assert raw["train_images"].shape == (60_000, 28, 28)


@needs_fashion
def test_one_epoch_on_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPEXP_CACHE_DIR", str(tmp_path / "cache"))  # found in Debian's folder
    monkeypatch.delenv("HPEXP_FASHION_MNIST_DIR", raising=False)
    cfg = compose(["data=fashion_mnist", "network=mlp30", "train.epochs=1", "optimizer.eta=0.5"])
    out = run(cfg, tmp_path / "run", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["name"] == "fashion_mnist" and summary["data"]["checksums"] == "verified"
    assert summary["data"]["verify"] is True
    assert summary["final"]["val_accuracy"] > 0.75  # one epoch of 784-30-10; chance is 0.10


def test_the_test_split_stays_sealed_for_the_users_data(tmp_path: Path) -> None:
    from hpexp.train.runner import SealedSplitError, load_data

    path = tmp_path / "d.npz"
    x = np.arange(40.0).reshape(20, 2)
    np.savez(path, x_train=x, y_train=np.arange(20) % 2, x_test=np.zeros((3, 5, 5, 5, 5)), y_test=[7])
    cfg = compose(["data=npz", f"data.path={path}", "network=linear", "train.batch_size=2"])
    assert set(load_data(cfg, allow_test=False)) == {"train", "val"}  # the bad test arrays unread
    with pytest.raises(SealedSplitError, match="sealed"):
        load_data(
            compose([f"data.path={path}", "data=npz", "train.monitor=[train,val,test]"]), allow_test=False
        )
    with pytest.raises(DataError, match=r"npz test images has shape \(3, 5, 5, 5, 5\)"):
        load_data(cfg, splits=["test"])


@needs_fashion
def test_data_command_names_the_dataset(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    from hpexp.cli import main

    monkeypatch.delenv("HPEXP_FASHION_MNIST_DIR", raising=False)
    main(["data", "verify", "fashion_mnist", str(FASHION)])
    assert capsys.readouterr().out.count("OK") == 4
    with pytest.raises(SystemExit):
        main(["data", "verify", "mnist", str(FASHION)])  # Fashion-MNIST's files are not MNIST
    assert "is Fashion-MNIST's train-images-idx3-ubyte, not MNIST's" in capsys.readouterr().err
