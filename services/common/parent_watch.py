"""A service started by a local launcher stops when that launcher dies.

``dfleet up`` and the local autoscaler start each service in a session of its
own (so that a terminal's Ctrl-C reaches the launcher, which stops the rest in
order). A launcher killed outright (SIGKILL, OOM) would then leave its services
running. The launcher puts its pid in ``DFLEET_PARENT_PID``; the service asks
the kernel for SIGTERM when its parent dies (Linux), and exits at once when the
parent is already gone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

ENV = "DFLEET_PARENT_PID"
PR_SET_PDEATHSIG = 1

log = logging.getLogger("dfleet.service")


def watch_parent() -> None:
    """SIGTERM to this process when the launcher named by ``DFLEET_PARENT_PID`` dies."""
    raw = os.environ.get(ENV, "")
    if not raw:
        return
    try:
        parent = int(raw)
    except ValueError:
        log.warning("%s=%r is not a pid; not watching the launcher", ENV, raw)
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("cannot ask for a parent-death signal (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:
        log.warning("the launcher (pid %d) is gone; stopping", parent)
        raise SystemExit(0)
