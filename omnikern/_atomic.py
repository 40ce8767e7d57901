"""Atomic file writes: nothing a user gave is lost to a crash or a full disk half-way.

Data goes to a temporary file in the destination folder (same filesystem, so the rename is atomic),
is flushed to disk, then renamed over the destination. On any failure the temporary file is removed
and the previous file, if any, is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to fill; renames it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (creating parent folders) and returns the path."""
    with replacing_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` as UTF-8 to ``path`` atomically and returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_file_atomic(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copies the file ``source`` to ``target`` atomically (streamed, not read into memory)."""
    with replacing_file(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def write_dir_atomic(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Runs ``write(tmp_dir)`` on a fresh temporary directory beside ``target``, then moves it to
    ``target`` (replacing a previous one) and returns ``target``; on any failure the temporary
    directory is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes, read in 16 MiB blocks (manifests record it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def listed_file(path: str | os.PathLike) -> dict:
    """A manifest's entry for a file it lists: ``{"file": name, "bytes": size, "sha256": digest}``."""
    path = Path(path)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def check_listed_file(directory: str | os.PathLike, entry: dict, manifest: str | os.PathLike) -> Path:
    """Returns the file a :func:`listed_file` entry of ``manifest`` names under ``directory``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: its size or checksum differs from the entry (damaged or replaced).
    """
    path = Path(directory) / str(entry.get("file", ""))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (listed in {manifest})")
    if path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256"):
        raise ValueError(f"{path}: its size or checksum differs from {manifest}: the file is damaged or replaced")
    return path
