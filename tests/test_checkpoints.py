"""Checkpoint files: complete or absent, and damage is detected."""

import os

import pytest

from popbt.checkpoints import CheckpointDir, CorruptCheckpoint, verify

UID = "0123456789abcdef0123456789abcdef"  # an experiment's


def test_write_is_atomic_and_checksummed(tmp_path):
    d = CheckpointDir(tmp_path / "ck", UID)
    written = d.write(1, 2, "a" * 32, lambda p: open(p, "wb").write(b"weights"))
    assert os.path.basename(written.path) == "m0001-i00002-0123456789ab-aaaaaaaaaaaa.ckpt"
    assert written.size == 7
    verify(written.path, written.sha256)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["m0001-i00002-0123456789ab-aaaaaaaaaaaa.ckpt"]


def test_a_save_that_fails_midway_leaves_no_file(tmp_path):
    d = CheckpointDir(tmp_path)

    def half_then_crash(path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        d.write(0, 0, "b" * 32, half_then_crash)
    assert list(tmp_path.iterdir()) == []


def test_truncated_flipped_and_missing_checkpoints_are_detected(tmp_path):
    d = CheckpointDir(tmp_path)
    w = d.write(0, 0, "c" * 32, lambda p: open(p, "wb").write(b"0123456789"))
    with open(w.path, "r+b") as f:
        f.truncate(5)
    with pytest.raises(CorruptCheckpoint, match="corrupt"):
        verify(w.path, w.sha256)
    w = d.write(0, 1, "d" * 32, lambda p: open(p, "wb").write(b"0123456789"))
    with open(w.path, "r+b") as f:
        f.seek(3)
        f.write(b"X")
    with pytest.raises(CorruptCheckpoint, match="corrupt"):
        verify(w.path, w.sha256)
    os.unlink(w.path)
    with pytest.raises(CorruptCheckpoint, match="missing"):
        verify(w.path, w.sha256)


def test_sweep_removes_only_old_unreferenced_files(tmp_path):
    d = CheckpointDir(tmp_path, UID)
    keep = d.write(0, 0, "e" * 32, lambda p: open(p, "wb").write(b"k"))
    orphan = d.write(1, 0, "f" * 32, lambda p: open(p, "wb").write(b"o"))
    assert d.sweep([keep.path], older_than=3600) == []  # too young: may be in flight
    old = 1_000_000_000
    os.utime(orphan.path, (old, old))
    os.utime(keep.path, (old, old))
    assert d.sweep([keep.path], older_than=3600) == [orphan.path]
    assert os.path.exists(keep.path)


def test_sweep_never_touches_a_file_popbt_did_not_write_for_this_experiment(tmp_path):
    """Another database's experiment of the same name in the same directory, the user's own
    files, and look-alikes: all stay, however old and unreferenced."""
    ours = CheckpointDir(tmp_path, UID)
    theirs = CheckpointDir(tmp_path, "fedcba9876543210fedcba9876543210")
    foreign = [
        theirs.write(0, 3, "a" * 32, lambda p: open(p, "wb").write(b"their final weights")).path,
        str(tmp_path / "pretrained.ckpt"),
        str(tmp_path / "m0001-i00002-aaaaaaaaaaaa.ckpt"),  # an older popbt's name, or a user's copy
        str(tmp_path / "m0001-i00002-0123456789ab-aaaaaaaaaaaa.ckpt.bak"),
        str(tmp_path / "notes.txt"),
    ]
    for path in foreign[1:]:
        open(path, "wb").write(b"user data")
    orphan = ours.write(2, 0, "f" * 32, lambda p: open(p, "wb").write(b"o"))
    old = 1_000_000_000
    for path in [*foreign, orphan.path]:
        os.utime(path, (old, old))
    assert ours.sweep([], older_than=0) == [orphan.path]
    assert all(os.path.exists(p) for p in foreign)
    assert CheckpointDir(tmp_path).sweep([], older_than=0) == []  # no uid: nothing can be proven ours


def test_sweep_keeps_referenced_files_under_a_directory_named_with_dot_dot(tmp_path):
    """``--dir ../runs`` names the checkpoints through '..': a kept file is still recognised."""
    (tmp_path / "cwd").mkdir()
    d = CheckpointDir(tmp_path / "cwd" / ".." / "ckpts", UID)
    keep = d.write(0, 0, "e" * 32, lambda p: open(p, "wb").write(b"k"))
    old = 1_000_000_000
    os.utime(keep.path, (old, old))
    assert d.sweep([keep.path], older_than=0) == []
    assert os.path.exists(keep.path)
