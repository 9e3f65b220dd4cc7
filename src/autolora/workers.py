"""Work shared by several processes on one folder: each unit of work is claimed with a lock file.

``autolora world train-bank`` and the synthesis study run as several identical commands (one per
core); a worker claims a LoRA or a held-out style before working on it and skips what another live
worker holds.
"""

from __future__ import annotations

import os
from pathlib import Path


def claim(lock: Path) -> bool:
    """Create ``lock`` holding this process's id; False while another live process holds it.

    A lock left by a process that no longer runs (a crashed worker) is taken over.
    """
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = lock.read_text().strip()
        if not holder:  # its writer has not written its id yet
            return False
        try:
            os.kill(int(holder), 0)  # signal 0 only asks whether the process exists
            return False
        except ProcessLookupError:
            lock.unlink(missing_ok=True)
            return claim(lock)
        except PermissionError:  # it exists, under another user
            return False
    with os.fdopen(descriptor, "w") as file:
        file.write(str(os.getpid()))
    return True
