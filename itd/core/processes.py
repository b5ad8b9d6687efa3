"""Worker processes that end with their parent, whatever ends it, and a portable "is this process alive" test.

`die_with_parent(parent_pid)` is called first thing in every worker process `itd` starts (the local engine's
pool, the scoring replicas). A worker must not outlive the process that started it: a parent killed by SIGTERM
or SIGKILL runs no cleanup, and its workers would go on at full CPU as orphans.

* Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)` has the kernel kill the worker the moment its parent dies. The parent
  may already be gone before the call takes effect, so the worker then compares `os.getppid()` with the parent's
  pid and exits itself. (The kernel sends the signal when the parent *thread* that started the worker ends:
  `itd` starts its workers from the thread that uses them and keeps that thread until the workers are done.)
* Elsewhere (macOS, Windows), or where `prctl` is unavailable: a daemon thread polls every `poll_s` seconds
  whether the parent is still alive (POSIX: the worker's parent pid changes when it is re-parented; Windows:
  the parent's exit code) and ends the worker with `os._exit` when it is not.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent", "pid_alive"]

_PR_SET_PDEATHSIG = 1
_STILL_ACTIVE = 259
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_ERROR_ACCESS_DENIED = 5


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not handle:
            return ctypes.get_last_error() == _ERROR_ACCESS_DENIED  # type: ignore[attr-defined]
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == _STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_pdeathsig() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this (worker) process when the process `parent_pid` that started it ends; see the module docstring."""
    if _set_pdeathsig():
        if os.getppid() != parent_pid:  # the parent died before the kernel was told
            os._exit(1)
        return
    if os.name == "nt":

        def parent_alive() -> bool:
            return pid_alive(parent_pid)

    else:

        def parent_alive() -> bool:
            return os.getppid() == parent_pid

    def watch() -> None:
        while parent_alive():
            time.sleep(poll_s)
        os._exit(1)

    if not parent_alive():
        os._exit(1)
    threading.Thread(target=watch, name="itd-parent-watchdog", daemon=True).start()
