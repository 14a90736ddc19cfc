"""Options, read with one precedence: command line > environment > ini file > default (as pytest-django).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from .api import PROVIDERS
from .services.state import default_state_dir

#: Stores that have URL and image options.
STORES = ("redis", "mongo", "elasticsearch")
#: Pinned Docker images.
DEFAULT_IMAGES = {
    "redis": "redis:7.4.1-alpine",
    "mongo": "mongo:7.0.14",
    "elasticsearch": "docker.elastic.co/elasticsearch/elasticsearch:8.15.3",
}
#: The image the Docker provider runs instead of the default when the installed
#: elasticsearch client is 9.x (a 9.x client refuses an 8.x server).
ELASTICSEARCH_9_IMAGE = "docker.elastic.co/elasticsearch/elasticsearch:9.0.0"
#: An example URL per store, for the help text.
EXAMPLE_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "mongo": "mongodb://127.0.0.1:27017/test",
    "elasticsearch": "http://127.0.0.1:9200",
}
#: What the embedded MongoDB provider may use.
MONGO_EMBEDDED = ("auto", "secantusdb", "mongomock")

BAD_CHOICE = "pytest-rollback: {source} is {value!r}, which is not one of {choices}"
BAD_NUMBER = "pytest-rollback: {source} is {value!r}; use a number of seconds greater than 0, e.g. 30"
BAD_BOOL = "pytest-rollback: {source} is {value!r}; use one of 1/0, true/false, yes/no, on/off"


@dataclasses.dataclass(frozen=True)
class _Spec:
    dest: str
    flag: str
    ini: str
    env: str
    help: str
    kind: str = "str"  # "str" | "bool" | "float"
    default: Any = None
    choices: tuple[str, ...] = ()
    #: older ini names and environment variables, still read (after the current ones)
    old_ini: tuple[str, ...] = ()
    old_env: tuple[str, ...] = ()
    #: other spellings of the flag
    aliases: tuple[str, ...] = ()

    @property
    def negative(self) -> str:
        """The flag that switches a flag off: ``--no-rollback-verify``; ``--rollback`` for ``--no-rollback``."""
        return "--" + self.flag[len("--no-") :] if self.flag.startswith("--no-") else "--no-" + self.flag[2:]


def _specs() -> list[_Spec]:
    specs = [
        _Spec(
            "rollback_provider", "--rollback-provider", "rollback_provider", "PYTEST_ROLLBACK_PROVIDER",
            "where servers come from: auto (default: configured URL, else Docker, else a local "
            "binary, else embedded), docker, local, external or embedded",
            default="auto", choices=PROVIDERS,
        ),
        _Spec(
            "rollback_verify", "--rollback-verify", "rollback_verify", "PYTEST_ROLLBACK_VERIFY",
            "after every restore, compare the whole store with the checkpoint and fail the test's "
            "teardown if they differ",
            kind="bool", default=False,
        ),
        _Spec(
            "rollback_allow_remote", "--rollback-allow-remote", "rollback_allow_remote", "PYTEST_ROLLBACK_ALLOW_REMOTE",
            "permit an external server that is not on a loopback address (its data is rolled back too)",
            kind="bool", default=False,
        ),
        _Spec(
            "rollback_disabled", "--no-rollback", "no_rollback", "PYTEST_NO_ROLLBACK",
            "give tests their servers but take no checkpoints and roll nothing back",
            kind="bool", default=False, old_ini=("rollback_disabled",), old_env=("PYTEST_ROLLBACK_DISABLED",),
        ),
        _Spec(
            "rollback_mongo_embedded", "--rollback-mongo-embedded", "rollback_mongo_embedded",
            "PYTEST_ROLLBACK_MONGO_EMBEDDED",
            "what the embedded MongoDB provider runs: auto (default: SecantusDB if installed, else "
            "mongomock), secantusdb or mongomock",
            default="auto", choices=MONGO_EMBEDDED,
        ),
        _Spec(
            "rollback_state_dir", "--rollback-state-dir", "rollback_state_dir", "PYTEST_ROLLBACK_STATE_DIR",
            "where the plugin keeps what must outlive a run: the leases of the servers it holds, the journals "
            "that put their data back after a crash, the records of the servers it started "
            "(default $XDG_STATE_HOME/pytest-rollback, else ~/.local/state/pytest-rollback)",
        ),
        _Spec(
            "rollback_recover", "--rollback-recover", "rollback_recover", "PYTEST_ROLLBACK_RECOVER",
            "put back the servers that interrupted runs left (their data, settings and the plugin's "
            "leftovers), end the servers they started, report, and exit without running tests",
            kind="bool", default=False,
        ),
        _Spec(
            "rollback_docker_reuse", "--rollback-docker-reuse", "rollback_docker_reuse", "PYTEST_ROLLBACK_DOCKER_REUSE",
            "keep the Docker containers at the end and reuse them (emptied) in the next run of this project; off "
            "when $CI is set, unless given on the command line or in the environment",
            kind="bool", default=False, old_ini=("rollback_reuse",), old_env=("PYTEST_ROLLBACK_REUSE",),
            aliases=("--rollback-reuse",),
        ),
        _Spec(
            "rollback_docker_prune", "--rollback-docker-prune", "rollback_docker_prune", "PYTEST_ROLLBACK_DOCKER_PRUNE",
            "remove this project's Docker containers kept for reuse (and those of interrupted runs), list them, "
            "and exit without running tests",
            kind="bool", default=False,
        ),
        _Spec(
            "rollback_timeout", "--rollback-timeout", "rollback_timeout", "PYTEST_ROLLBACK_TIMEOUT",
            "seconds a server may take to answer one request of the plugin before it counts as "
            "stopped answering (default 30)",
            kind="float", default=30.0,
        ),
    ]
    for store in STORES:
        upper = store.upper()
        specs.append(_Spec(
            f"rollback_{store}_url", f"--rollback-{store}_url".replace("_", "-"), f"rollback_{store}_url",
            f"PYTEST_ROLLBACK_{upper}_URL",
            f"use this running {store} server (e.g. {EXAMPLE_URLS[store]}); the store is then "
            "active for every test of the session",
        ))
        specs.append(_Spec(
            f"rollback_{store}_image", f"--rollback-{store}_image".replace("_", "-"), f"rollback_{store}_image",
            f"PYTEST_ROLLBACK_{upper}_IMAGE",
            f"Docker image for {store} (default {DEFAULT_IMAGES[store]})", default=DEFAULT_IMAGES[store],
        ))
    return specs


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rollback", "pytest-rollback: real servers, rolled back after every test")
    for spec in _specs():
        if spec.kind == "bool":
            group.addoption(spec.flag, *spec.aliases, action="store_true", dest=spec.dest, default=None, help=spec.help)
            negatives = (_Spec(spec.dest, alias, "", "", "").negative for alias in spec.aliases)
            group.addoption(
                spec.negative, *negatives, action="store_false", dest=spec.dest, default=None,
                help=f"switch {spec.flag} off, whatever the ini file or the environment say",
            )
        else:
            group.addoption(spec.flag, action="store", dest=spec.dest, default=None, metavar="VALUE", help=spec.help)
        parser.addini(spec.ini, help=f"{spec.help} (also {spec.flag}, ${spec.env})", default="")
        for old in spec.old_ini:
            parser.addini(old, help=f"the older name of {spec.ini}", default="")


def _parse(spec: _Spec, raw: object, source: str) -> Any:
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise pytest.UsageError(BAD_BOOL.format(source=source, value=raw))
    if spec.kind == "float":
        try:
            number = float(str(raw).strip())
        except ValueError:
            number = -1.0
        if not number > 0:
            raise pytest.UsageError(BAD_NUMBER.format(source=source, value=raw))
        return number
    value = str(raw).strip()
    if spec.choices and value not in spec.choices:
        raise pytest.UsageError(BAD_CHOICE.format(source=source, value=value, choices=", ".join(spec.choices)))
    return value or None


def _resolve(config: pytest.Config, spec: _Spec) -> Any:
    """The option's value: command line, else environment, else ini file, else default (as pytest-django)."""
    return _resolve_from(config, spec)[0]


def _resolve_from(config: pytest.Config, spec: _Spec) -> tuple[Any, str]:
    """The option's value and where it came from: ``cli``, ``env``, ``ini`` or ``default``."""
    cli = config.getoption(spec.dest, None)
    if cli is not None:
        return _parse(spec, cli, spec.flag), "cli"
    for env_name in (spec.env, *spec.old_env):
        env = os.environ.get(env_name)
        if env not in (None, ""):
            return _parse(spec, env, f"${env_name}"), "env"
    for ini_name in (spec.ini, *spec.old_ini):
        ini = config.getini(ini_name)
        if ini not in ("", None, []):
            return _parse(spec, ini, f"ini option {ini_name}"), "ini"
    return spec.default, "default"


@dataclasses.dataclass(frozen=True)
class Options:
    """Every pytest-rollback option, resolved."""

    provider: str = "auto"
    verify: bool = False
    allow_remote: bool = False
    disabled: bool = False
    mongo_embedded: str = "auto"
    state_dir: str = ""
    recover: bool = False
    timeout: float = 30.0
    #: keep Docker containers for the next run, and reuse kept ones (``--rollback-docker-reuse``)
    docker_reuse: bool = False
    docker_prune: bool = False
    urls: dict[str, str | None] = dataclasses.field(default_factory=dict)
    images: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        specs = _specs()
        values = {spec.dest: _resolve(config, spec) for spec in specs}
        reuse, source = _resolve_from(config, next(s for s in specs if s.dest == "rollback_docker_reuse"))
        if source == "ini" and os.environ.get("CI"):  # a checked-in ini value does not keep containers on CI
            reuse = False
        return cls(
            provider=values["rollback_provider"],
            verify=values["rollback_verify"],
            allow_remote=values["rollback_allow_remote"],
            disabled=values["rollback_disabled"],
            mongo_embedded=values["rollback_mongo_embedded"],
            state_dir=str(values["rollback_state_dir"] or default_state_dir()),
            recover=values["rollback_recover"],
            timeout=values["rollback_timeout"],
            docker_reuse=reuse,
            docker_prune=values["rollback_docker_prune"],
            urls={s: values[f"rollback_{s}_url"] for s in STORES},
            images={s: values[f"rollback_{s}_image"] for s in STORES},
        )


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """What a provider needs to know to serve one store."""

    store: str
    provider: str
    url: str | None
    image: str
    allow_remote: bool
    #: pytest-xdist worker id ("gw0", ...) or None outside xdist.
    worker: str | None
    config: pytest.Config = dataclasses.field(repr=False, compare=False)
    #: Store-specific settings (``embedded``: what the embedded MongoDB provider runs).
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    #: The state directory (``--rollback-state-dir``): leases, journals, records of started servers.
    state_dir: str = dataclasses.field(default_factory=lambda: str(default_state_dir()), compare=False)
    #: Seconds a server may take to answer one request before it counts as stopped (``--rollback-timeout``).
    timeout: float = 30.0

    @property
    def worker_index(self) -> int:
        return int(self.worker[2:]) if self.worker and self.worker[2:].isdigit() else 0

    @property
    def worker_count(self) -> int:
        """How many pytest-xdist workers the run has (1 outside xdist)."""
        workerinput = getattr(self.config, "workerinput", None) if self.config is not None else None
        return int((workerinput or {}).get("workercount") or 1)
