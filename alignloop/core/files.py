"""Files that are never half-written: write beside the target, flush to disk, then rename over it.

The one owner of write-to-temp-then-rename (it was written about fourteen times). A crash leaves either the old
file or the new one, never a torn one; ``os.replace`` is atomic on POSIX and Windows within one filesystem, which
is why the temporary file always sits in the target's own folder. Standard library only (``core`` imports no
torch).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator


def _fsync(path: Path) -> None:
    """Push a file's bytes to disk before the rename makes them visible (best effort on odd filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, move it over ``path``.

    For writers that take a path (``torch.save``, ``csv``, ``np.save``)::

        with atomic_path(out / "features.pt") as tmp:
            torch.save(value, tmp)

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the pid keeps two processes writing the same target (ranks, workers) off each other's temporary file
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON atomically (values JSON does not know are written with ``str``)."""
    return write_text(path, json.dumps(data, indent=indent, default=str))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line atomically; a ``.gz`` name is gzip-compressed."""
    target = Path(path)
    opener = gzip.open if target.suffix == ".gz" else open
    with atomic_path(target) as tmp, opener(tmp, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return target


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Move a fully written folder ``tmp`` to ``folder``, replacing any folder there.

    The old folder is first renamed aside, so at every moment one complete folder exists under one of the two
    names; it is removed only after the new one is in place."""
    tmp, folder = Path(tmp), Path(folder)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder
