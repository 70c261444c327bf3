"""Child processes that do not outlive the command that started them.

A server started for one command (the temporary Prefect server of `sftjudge run`, a stage's `vllm serve`) is
stopped by that command when it ends, also when it fails. A kill -9 of the command gives it no chance to: the server
would keep its port, and on a GPU worker the card's memory, until someone finds it. On Linux the kernel sends the
child SIGTERM when its parent dies (PR_SET_PDEATHSIG), which both servers handle by shutting down.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent():
    """A `preexec_fn` for a child that gets SIGTERM when the thread that starts it ends (Linux; elsewhere None).

    The signal follows the starting *thread*: start such a child from a thread that lives as long as it should.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()  # read here, in the parent: in the child it could already be the reaper's pid

    def preexec() -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
