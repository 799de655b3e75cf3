"""Checkpoint files: written atomically, named uniquely, verified by checksum on load.

Who references which checkpoint is the store's business; this module only guarantees that
a file that exists under its final name is complete, and that a damaged one is detected.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
SUFFIX = ".ckpt"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint is missing, or its bytes do not match the checksum recorded for it."""


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


class CheckpointDir:
    """One experiment's checkpoint directory (a shared filesystem path on a cluster)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def write(self, member: int, interval: int, token: str, save: Callable[[str], None]) -> Written:
        """Call ``save(tmp_path)``, then fsync and rename it into place.

        The final name carries the lease token, so a zombie worker's file can never replace
        the file of the worker that took its lease over.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"m{member:04d}-i{interval:05d}-{token[:12]}{SUFFIX}"
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        try:
            save(str(tmp))
            if not tmp.is_file():
                raise RuntimeError(f"save() wrote nothing to the path it was given ({tmp})")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            digest, size = sha256_file(tmp), tmp.stat().st_size
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Written(str(final), digest, size)

    def sweep(self, keep: Iterable[str], older_than: float, busy: Iterable[tuple[int, int]] = ()) -> list[str]:
        """Delete files no row references (left by a worker killed before its report).

        Only files older than ``older_than`` seconds go, so an in-flight write is never touched,
        and never a file of a (member, interval) in ``busy``: the tasks running when the caller
        read ``keep``. Their holder may be frozen (SIGSTOP, a stalled disk, a locked database)
        between writing the file and reporting it, for any time, and its report is still
        accepted as long as nobody took its lease over.
        """
        if not self.root.is_dir():
            return []
        keep = {os.path.abspath(p) for p in keep}
        busy = set(busy)
        cutoff = time.time() - older_than
        removed = []
        for path in self.root.iterdir():
            if (
                (path.name.endswith(SUFFIX) or path.name.startswith(".tmp-"))
                and os.path.abspath(path) not in keep
                and owner(path.name) not in busy
            ):
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue  # its worker renamed or deleted it meanwhile
                path.unlink(missing_ok=True)
                removed.append(str(path))
        return removed


_NAME = re.compile(r"^(?:\.tmp-)?m(\d+)-i(\d+)-")


def owner(name: str) -> tuple[int, int] | None:
    """The (member, interval) a checkpoint file name was written for, if it is one of ours."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
