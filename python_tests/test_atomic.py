"""omnikern._atomic: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import pytest

import hashlib

from omnikern._atomic import check_listed_file, copy_file_atomic, listed_file, write_bytes_atomic, write_text_atomic


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "file.json"
    assert write_text_atomic(path, "first") == path
    write_bytes_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_failure_keeps_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    write_bytes_atomic(path, b"kept")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("omnikern._atomic.os.replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(path, b"lost")
    assert path.read_bytes() == b"kept"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_copy_file(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 100)
    target = copy_file_atomic(source, tmp_path / "out" / "target.bin")
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        copy_file_atomic(tmp_path / "missing.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["target.bin"]


def test_listed_file_entries_are_checked(tmp_path):
    path = write_bytes_atomic(tmp_path / "part.bin", b"abc" * 1000)
    entry = listed_file(path)
    assert entry == {"file": "part.bin", "bytes": 3000, "sha256": hashlib.sha256(b"abc" * 1000).hexdigest()}
    assert check_listed_file(tmp_path, entry, "manifest.json") == path
    path.write_bytes(b"abd" * 1000)  # same size, other bytes
    with pytest.raises(ValueError, match=r"part.bin: its size or checksum differs from manifest.json"):
        check_listed_file(tmp_path, entry, "manifest.json")
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"part.bin: no such file \(listed in manifest.json\)"):
        check_listed_file(tmp_path, entry, "manifest.json")
