"""omnikern._atomic: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import pytest

from omnikern._atomic import copy_file_atomic, write_bytes_atomic, write_text_atomic


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
