"""Checkpoint files: written atomically, named uniquely, verified by checksum on load.

Who references which checkpoint is the store's business; this module only guarantees that
a file that exists under its final name is complete, that a damaged one is detected, and
that popbt never deletes a file it did not write: every name carries the uid of its
experiment (random per database and experiment), and the sweep touches nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, CorruptCheckpoint, WorkerFault

CHUNK = 1 << 20
SUFFIX = ".ckpt"
# The operating system saying the disk, not the member, is the trouble.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


@dataclass(frozen=True)
class Written:
    path: str
    sha256: str
    size: int


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _uid_tag(uid: str) -> str:
    return (uid or "0" * 12)[:12]


class CheckpointDir:
    """One experiment's checkpoint directory (a shared filesystem path on a cluster).

    ``uid`` is the experiment's; files of other experiments, other databases or the user's
    own sharing the directory are never touched by ``sweep``."""

    def __init__(self, root: str | os.PathLike, uid: str = "") -> None:
        self.root = Path(root)
        self.uid = uid
        tag = re.escape(_uid_tag(uid))
        self._ours = re.compile(rf"^(?:\.tmp-)?m(\d{{4,}})-i(\d{{5,}})-{tag}-[0-9a-z-]{{1,40}}\{SUFFIX}(?:-\d+)?$")

    def name(self, member: int, interval: int, token: str) -> str:
        return f"m{member:04d}-i{interval:05d}-{_uid_tag(self.uid)}-{token[:12]}{SUFFIX}"

    def write(self, member: int, interval: int, token: str, save: Callable[[str], None]) -> Written:
        """Call ``save(tmp_path)``, then fsync and rename it into place.

        The final name carries the lease token, so a zombie worker's file can never replace
        the file of the worker that took its lease over.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / self.name(member, interval, token)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        try:
            save(str(tmp))
            if not tmp.is_file():
                raise RuntimeError(f"save() wrote nothing to the path it was given ({tmp})")
            digest, size = _sync_and_hash(tmp), tmp.stat().st_size
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Written(str(final), digest, size)

    def owner(self, name: str) -> tuple[int, int] | None:
        """The (member, interval) of one of this experiment's checkpoint files; None for any
        other file."""
        match = self._ours.match(name)
        return (int(match.group(1)), int(match.group(2))) if match else None

    def sweep(self, keep: Iterable[str], older_than: float, busy: Iterable[tuple[int, int]] = ()) -> list[str]:
        """Delete this experiment's files that no row references (left by a worker killed
        before its report).

        Only files older than ``older_than`` seconds go, so an in-flight write is never touched,
        and never a file of a (member, interval) in ``busy``: the tasks running when the caller
        read ``keep``. Their holder may be frozen (SIGSTOP, a stalled disk, a locked database)
        between writing the file and reporting it, for any time, and its report is still
        accepted as long as nobody took its lease over.
        """
        if not self.uid or not self.root.is_dir():
            return []  # without the experiment's uid nothing can be proven ours
        keep = {os.path.abspath(p) for p in keep}
        busy = set(busy)
        cutoff = time.time() - older_than
        removed = []
        for path in self.root.iterdir():
            owner = self.owner(path.name)
            if owner is None or owner in busy or os.path.abspath(path) in keep:
                continue
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue  # its worker renamed or deleted it meanwhile
            path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed

    def probe(self) -> None:
        """Raise WorkerFault unless a file can be written, synced and removed here."""
        try:
            check_writable(self.root)
        except ConfigError as e:
            raise WorkerFault(str(e)) from None


def check_writable(root: Path, leave: bool = True) -> None:
    """ConfigError unless ``root`` (created if missing) takes a file. ``leave=False``: remove
    the directories this created, so that a command refused later wrote nothing."""
    made, p = [], Path(root).absolute()
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    probe = Path(root) / f".popbt-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"popbt")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfigError(f"checkpoint directory {root} is unusable: {e.strerror or e}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        if not leave:
            for path in made:  # deepest first
                try:
                    path.rmdir()
                except OSError:
                    break


def is_disk_fault(error: BaseException) -> bool:
    """The error, or one it was raised from, is the operating system refusing the disk."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def private_dir(prefix: str) -> Path:
    """A fresh directory only this user can enter (mode 0700, created here, owner checked):
    scratch copies of checkpoints kept in the database are verified, then loaded from it, and
    nobody else may swap a file in between."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    st = path.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or path.is_symlink():
        raise WorkerFault(f"scratch directory {path} is not private to this user")
    return path


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def verify(path: str, sha256: str) -> None:
    """Raise CorruptCheckpoint unless ``path`` exists and matches ``sha256``."""
    if not os.path.isfile(path):
        raise CorruptCheckpoint(f"checkpoint {path} is missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt (sha256 {actual[:12]}, expected {sha256[:12]})")


def delete(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _sync_and_hash(path: Path) -> str:
    """fsync the file and hash it at once: the disk flushes while the CPU hashes the pages
    still in memory (hashlib lets go of the GIL), so a large checkpoint costs the longer of
    the two, not their sum."""
    failed: list[BaseException] = []

    def flush() -> None:
        try:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException as e:  # raised below, in the caller's thread
            failed.append(e)

    flusher = threading.Thread(target=flush, name="popbt-fsync")
    flusher.start()
    try:
        digest = sha256_file(path)
    finally:
        flusher.join()
    if failed:
        raise failed[0]
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
