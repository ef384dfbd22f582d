"""Whether a process is alive, from its pid (Linux ``/proc``): shared by the dev stack and the worker."""

from __future__ import annotations

import os

__all__ = ["alive"]


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (a container's pid 1 may never reap).

    A process of another user counts as alive (``kill`` may not signal it, but it exists).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
