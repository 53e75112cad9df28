"""A lock file that keeps two processes from writing into the same run folder at once.

``RUN/.lock`` is created with O_EXCL and holds the owner's host name and pid. A lock whose owner is on this
host and no longer alive (a killed run) is stale and is taken over; a live owner gives a one-line error.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .errors import DifflabError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._held = False

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DifflabError(f"{self.run_dir}: cannot create run folder ({e.strerror or e})") from None
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise DifflabError(f"{self.run_dir}: another difflab process is writing this run ({self.path})") from None
            except OSError as e:
                raise DifflabError(f"{self.run_dir}: cannot write here ({e.strerror or e})") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._held = True
            return
        raise DifflabError(f"{self.path}: could not take over a stale lock")

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return True  # unreadable or half-written lock: its writer died while creating it
        if owner.get("host") != socket.gethostname():
            return False
        pid = int(owner.get("pid", -1))
        return pid == os.getpid() or not _alive(pid)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
