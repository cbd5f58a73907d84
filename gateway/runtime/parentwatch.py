"""Workers die with their supervisor.

`serve --workers N` runs uvicorn's supervisor, which starts N worker processes sharing one listening socket. If
the supervisor is killed outright (`kill -9`, the OOM killer), nothing told the workers: they kept serving,
unsupervised, and held the port, so a restart failed with "Address already in use".

``watch`` is called in each worker as it starts. It asks Linux for SIGTERM when the parent dies
(PR_SET_PDEATHSIG: it fires when the *thread* that started the worker exits; uvicorn's supervisor starts every
worker from its main thread, whose end is the process's) and, on every platform, runs a thread that waits for
the parent's end: on a pidfd (Linux 5.3+: readable the moment the parent exits), else by looking at
os.getppid() every half second. The thread says in the log why the worker stops, and sees a parent that died
before the prctl (whose signal therefore never comes).

Either way the worker gets SIGTERM, which uvicorn handles as a graceful stop: it closes the listening socket at
once (the port is free for a restart), finishes the requests in flight (up to ``timeout_graceful_shutdown``) and
runs the app's lifespan shutdown, which writes the audit records still queued. A stop that takes longer than
``grace`` seconds ends with os._exit: a worker nobody supervises never hangs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time

log = logging.getLogger("agentgate.parentwatch")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
INTERVAL = 0.5  # seconds between two looks at the parent
EXIT_ORPHANED = 1  # the exit status of a worker that did not stop within its grace (nobody is left to read it)


def watch(parent: int, *, grace: float, deathsig: bool = True, interval: float = INTERVAL) -> None:
    """Stop this process gracefully when the process `parent` (its supervisor) is gone, and exit at the latest
    `grace` seconds after. `deathsig`: also ask Linux to send SIGTERM at the parent's death (the thread alone
    sees it within `interval`)."""
    if deathsig:
        _set_deathsig(signal.SIGTERM)
    # The pidfd is opened before the thread's first look at getppid: if the parent is still this process's
    # then, it was alive when the pidfd was opened, which therefore names it (not a process reusing its pid).
    threading.Thread(target=_watch, args=(parent, grace, interval, _pidfd(parent)), name="agentgate-parentwatch",
                     daemon=True).start()


def _set_deathsig(sig: int) -> bool:
    """PR_SET_PDEATHSIG on Linux; False where there is no such call (the thread is then the only watch)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): the parent is watched every %g s instead",
                        ctypes.get_errno(), INTERVAL)
            return False
    except (OSError, AttributeError):  # no libc to load, or no prctl in it
        return False
    return True


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when process pid exits; None where there is none."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:  # an older kernel, a sandbox that refuses it, or the process already gone
        return None


def _watch(parent: int, grace: float, interval: float, pidfd: int | None) -> None:
    exited = select.poll()  # poll, not select: no limit on the descriptor's number
    if pidfd is not None:
        exited.register(pidfd, select.POLLIN)
    while os.getppid() == parent:  # an orphan is adopted by init or a subreaper: its parent id changes
        if pidfd is None:
            time.sleep(interval)
            continue
        if exited.poll(interval * 1000):  # the parent has exited (getppid may lag a moment behind the pidfd)
            break
    if pidfd is not None:
        with contextlib.suppress(OSError):
            os.close(pidfd)
    log.warning("the supervisor (pid %d) is gone: worker %d stops (in-flight requests finished, audit records "
                "written; at most %g s)", parent, os.getpid(), grace)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful stop (a second SIGTERM after the prctl's is harmless)
    time.sleep(grace)
    log.error("worker %d did not stop within %g s of its supervisor's death: exiting now", os.getpid(), grace)
    os._exit(EXIT_ORPHANED)
