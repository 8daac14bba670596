"""Helpers for benchmarks that drive a real `siteloc serve` process over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`siteloc serve` in a subprocess (embedded mode in a temporary data dir unless env says otherwise), or with
    `ceiling` the bare FastAPI app of `bench.ceiling_app`."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        workers: int = 1,
        ceiling: bool = False,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="siteloc-bench-")
        self.data_dir = data_dir or Path(self._tmp.name)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_key = "bench-admin-" + os.urandom(8).hex()
        full_env = {**os.environ, "SITELOC_DATA_DIR": str(self.data_dir), "SITELOC_BOOTSTRAP_ADMIN_KEY": self.admin_key}
        full_env.update(env or {})
        self._log: IO[bytes] = open(self.data_dir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers)]
        if ceiling:  # the bare FastAPI app of bench.ceiling_app, same process count
            cmd = [sys.executable, "-m", "uvicorn", "bench.ceiling_app:app", "--port", str(self.port)]
            cmd += ["--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(
            cmd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_up()
        self.headers = {"Authorization": f"Bearer {self.admin_key}"}

    def _wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.data_dir / "server.log").read_text())
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process in MiB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M))
        return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024

    def _tree_pids(self) -> list[int]:
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def tree_cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the server and its child processes: on a shared host,
        CPU per request is the figure that does not depend on how much of the machine others take."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self._tree_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / tick

    def tree_rss_mib(self) -> float:
        """Resident memory of the server and its child processes (uvicorn workers), MiB."""
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        total = 0
        for pid in pids:
            try:
                m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
            except OSError:
                continue
            total += int(m.group(1)) if m else 0
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
        self._tmp.cleanup()


class RssSampler:
    """Samples a process's RSS in the background; `peak` is the highest VmHWM seen."""

    def __init__(self, server: Server, every_s: float = 0.2) -> None:
        self._server = server
        self._every = every_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(FileNotFoundError, KeyError):
            self.peak = max(self.peak, self._server.rss_mib()[1])

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()
