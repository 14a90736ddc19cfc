"""The ``docker`` provider: a pinned image started with testcontainers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..api import Service, StoreUnavailable
from ..options import StoreSettings


def engine_answers(timeout: float = 2.0) -> str | None:
    """None when a Docker engine answers a ping, else the reason it does not."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine (no DOCKER_HOST and no /var/run/docker.sock)"
    try:
        import docker
    except ImportError:
        return "the docker package is not installed (pip install 'pytest-rollback[docker]')"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        client.close()
    except Exception as exc:
        return f"the Docker engine did not answer ({exc.__class__.__name__})"
    return None


IMAGE_UNAVAILABLE = (
    "image {image} is not on the Docker engine and could not be pulled ({why}); build or load it under that "
    "name, or pass --rollback-{store}-image"
)


def has_image(image: str) -> bool:
    """True when the engine has ``image`` already (no pull)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def ensure_image(image: str, store: str) -> None:
    """Pull ``image`` if the engine does not have it; StoreUnavailable when that fails (no registry)."""
    if has_image(image):
        return
    import docker

    client = docker.from_env(timeout=300)
    try:
        client.images.pull(image)
    except docker.errors.DockerException as exc:
        why = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:200]
        raise StoreUnavailable(IMAGE_UNAVAILABLE.format(image=image, why=why, store=store)) from None
    finally:
        client.close()


def _start(
    settings: StoreSettings, inner_port: int, command: str | None, env: dict[str, str] | None = None, image: str = ""
) -> tuple[Any, str, int]:
    """Start ``image`` (default ``settings.image``) with ``command`` and ``env``; the container and its port."""
    reason = engine_answers()
    if reason is not None:
        raise StoreUnavailable(reason)
    try:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer
    except ImportError:
        raise StoreUnavailable("testcontainers is not installed (pip install 'pytest-rollback[docker]')") from None
    image = image or settings.image
    ensure_image(image, settings.store)
    if not testcontainers_config.ryuk_disabled and not has_image(testcontainers_config.ryuk_image):
        # the reaper is one more image to pull: without it, the plugin stops its containers itself
        testcontainers_config.ryuk_disabled = True
    container = DockerContainer(image).with_exposed_ports(inner_port)
    if command:
        container.with_command(command)
    for key, value in (env or {}).items():
        container.with_env(key, value)
    container.start()
    try:
        return container, container.get_container_host_ip(), int(container.get_exposed_port(inner_port))
    except BaseException:
        container.stop()
        raise


def _logs(container: Any) -> Callable[[], str]:
    """A function that returns the container's output so far (for start-up errors)."""

    def logs() -> str:
        out, err = container.get_logs()
        return str((out + err).decode(errors="replace"))

    return logs


def redis(settings: StoreSettings) -> Service:
    """Start ``settings.image`` (default pinned in options) and wait for Redis to answer."""
    import redis as redis_py

    from . import wait_until

    start = time.perf_counter()
    container, host, port = _start(settings, 6379, "redis-server --save '' --appendonly no")
    try:
        client = redis_py.Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=settings.timeout)

        logs = _logs(container)

        wait_until(lambda: bool(client.ping()), 60, f"redis container {settings.image}", logs)
        version = str(client.info("server").get("redis_version", "?"))
        client.close()
    except BaseException:
        container.stop()
        raise
    return Service(
        name="redis",
        provider="docker",
        url=f"redis://{host}:{port}/0",
        host=host,
        port=port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"db": 0, "dbs": None, "image": settings.image},
        stop=container.stop,
    )


def mongo(settings: StoreSettings) -> Service:
    """Start ``settings.image`` as a single-node replica set (change streams need one).

    Ready means elected primary, not merely answering a ping. Under xdist each
    worker starts its own container: testcontainers ties a container's life to
    the process that started it, so it cannot be shared between workers.
    """
    import pymongo

    from .local import initiate_replica_set
    from .shared import worker_database

    start = time.perf_counter()
    container, host, port = _start(settings, 27017, "--replSet rs0 --bind_ip_all --quiet --wiredTigerCacheSizeGB 0.25")
    try:
        url = f"mongodb://{host}:{port}/?directConnection=true"
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=500, socketTimeoutMS=int(settings.timeout * 1000)
        )

        logs = _logs(container)

        try:
            # the member's address as the container sees itself; clients use directConnection
            version = initiate_replica_set(client, "127.0.0.1:27017", f"mongo container {settings.image}", logs)
        finally:
            client.close()
    except BaseException:
        container.stop()
        raise
    return Service(
        name="mongo",
        provider="docker",
        url=url,
        host=host,
        port=port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"db": worker_database(settings), "dbs": None, "image": settings.image},
        stop=container.stop,
    )


def elasticsearch_image(settings: StoreSettings) -> str:
    """The configured image; when left at the default, one the installed client can talk to."""
    from ..options import DEFAULT_IMAGES, ELASTICSEARCH_9_IMAGE

    if settings.image != DEFAULT_IMAGES["elasticsearch"]:
        return settings.image
    try:
        from importlib.metadata import version

        major = int(version("elasticsearch").split(".")[0])
    except Exception:
        return settings.image
    return ELASTICSEARCH_9_IMAGE if major >= 9 else settings.image


def elasticsearch(settings: StoreSettings) -> Service:
    """Start a single Elasticsearch node: security off, a 512 MB heap, no built-in templates.

    Ready when the cluster's health is yellow or green. Each xdist worker starts
    its own container.
    """
    from .local import wait_for_elasticsearch

    start = time.perf_counter()
    image = elasticsearch_image(settings)
    env = {
        "discovery.type": "single-node",
        "xpack.security.enabled": "false",
        "ES_JAVA_OPTS": "-Xms512m -Xmx512m",
        "stack.templates.enabled": "false",
        "ingest.geoip.downloader.enabled": "false",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    container, host, port = _start(settings, 9200, None, env, image)
    try:

        logs = _logs(container)

        url = f"http://{host}:{port}"
        version = wait_for_elasticsearch(url, f"elasticsearch container {image}", logs, timeout=180)
    except BaseException:
        container.stop()
        raise
    return Service(
        name="elasticsearch",
        provider="docker",
        url=url,
        host=host,
        port=port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"prefix": "", "image": image},
        stop=container.stop,
    )
