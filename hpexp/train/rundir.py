"""The run directory: the one format every training run writes, whoever started it.

    config.yaml    the resolved config, with the chosen option of every config group
    history.csv    one row per epoch (rewritten after every epoch, so a killed run keeps its curve)
    summary.json   status, stop reason, best epoch and its record, final record, seconds, versions
    weights.npz    optional: the final parameters, layer by layer (a dense layer's weights as the
                   book's (n_out, n_in), then its biases (1, n_out); conv filters (filters, c, kh, kw))

Every file is written atomically (a temporary file in the same folder, then os.replace), so a
reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "HistoryWriter",
    "history_csv",
    "read_history",
    "read_summary",
    "write_atomic",
    "write_history",
    "write_summary",
    "write_weights",
]

Record = dict[str, Any]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own 0600 would hide runs from others


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def history_csv(history: Sequence[Record]) -> str:
    columns = list(dict.fromkeys(key for record in history for key in record))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def write_history(run_dir: Path, history: Sequence[Record]) -> None:
    write_atomic(Path(run_dir) / "history.csv", history_csv(history))


class HistoryWriter:
    """Appends one record per epoch to history.csv, so a killed run keeps every finished epoch.

    The header and first row are written atomically; later rows are appended and flushed (a run of
    thousands of epochs must not rewrite the whole file each epoch). A row cut short by a crash is
    skipped by `read_history`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "history.csv"
        self.columns: list[str] | None = None

    def append(self, record: Record) -> None:
        if self.columns is None:
            self.columns = list(record)
            write_atomic(self.path, history_csv([record]))
            return
        out = io.StringIO()
        csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n").writerow(record)
        with self.path.open("a") as f:
            f.write(out.getvalue())
            f.flush()


def write_summary(run_dir: Path, summary: Record) -> None:
    write_atomic(Path(run_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def write_weights(run_dir: Path, params: Sequence[np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, *params)
    write_atomic(Path(run_dir) / "weights.npz", buffer.getvalue())


def read_history(run_dir: Path) -> list[Record]:
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
            for row in csv.DictReader(f)
            if None not in row.values() and None not in row  # a row cut short by a crash
        ]


def read_summary(run_dir: Path) -> Record:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {"status": "unknown"}
