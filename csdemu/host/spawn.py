"""Start a throwaway daemon (temp data dir and socket) for tools, demos and tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from csdemu.transport.control import reachable


def read_log(path: str) -> str:
    """A child's log so far ("" if there is none yet)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def terminate(proc, timeout: float) -> int:
    """SIGTERM a child, SIGKILL it if it outlives `timeout` s; -> its exit status."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode if proc else 0


class DaemonProcess:
    """A `csdemu start --foreground` child process."""

    def __init__(self, data_dir: str | None = None, socket_path: str | None = None,
                 profile: str | None = None, extra_args=(), env=None):
        self.tmp = tempfile.mkdtemp(prefix="csdemu-")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.socket_path = socket_path or os.path.join(self.tmp, "csdemu.sock")
        self.profile = profile
        self.extra_args = list(extra_args)
        self.env = env
        self.proc = None
        self.log_path = os.path.join(self.tmp, "daemon.log")

    def start(self, timeout: float = 60.0) -> "DaemonProcess":
        args = [sys.executable, "-m", "csdemu", "start", "--foreground",
                "--data-dir", self.data_dir, "--socket", self.socket_path, *self.extra_args]
        if self.profile:
            args += ["--profile", self.profile]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, env=self.env)
        deadline = time.monotonic() + timeout
        while not reachable(self.socket_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"daemon did not listen within {timeout}s: {self.log_text()[-2000:]}")
            time.sleep(0.02)
        return self

    def memory(self) -> dict:
        """The daemon's VmRSS, VmHWM, RssAnon and RssFile, in bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0]) * 1024
        return out

    def log_text(self) -> str:
        return read_log(self.log_path)

    def stop(self, timeout: float = 30.0) -> int:
        return terminate(self.proc, timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
