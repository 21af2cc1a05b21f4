"""One writer per run folder: an advisory lock held while a run trains.

``RUN_DIR/.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking) and holds the
owner's PID. The operating system drops the lock when the process ends, however it ends, so a
``kill -9`` or a power cut never leaves a folder locked; the file itself stays (removing it
would let a third process lock a different file of the same name). Readers (``sample``,
``eval``, loading a run) take no lock and keep working while a run trains.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:   # Windows: no advisory locks; the run folder is then not protected
    fcntl = None

LOCK_NAME = ".lock"


class RunFolderLocked(RuntimeError):
    """Another process is training into this run folder."""


class RunLock:
    """``with RunLock(run_dir):`` owns ``run_dir`` (created if needed) until the block ends.

    Raises :class:`RunFolderLocked` at once, naming the holder's PID, when another process holds it.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.created = False

    def acquire(self) -> "RunLock":
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunFolderLocked(
                    f"{self.run_dir} is in use: another training process"
                    + (f" (PID {holder})" if holder else "")
                    + " is writing to it; wait for it to finish, stop it, or choose another output folder (--out)"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self, remove_if_unused: bool = False) -> None:
        """Drop the lock; with ``remove_if_unused``, also remove the run folder when this lock created
        it and nothing else was written into it (a run that failed before it started)."""
        if self._fd is None:
            return
        if remove_if_unused and self.created and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
            self.path.unlink(missing_ok=True)
            try:
                self.run_dir.rmdir()
            except OSError:
                pass
        os.close(self._fd)          # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
