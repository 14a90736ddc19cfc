"""pytest hooks: options, hook specs, and the session object that runs the engine.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Generator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from . import builtin, hookspecs, xdist_groups
from .api import PROVIDERS, RestoreReport, Rollbackable, RollbackError, Service, StoreFault, StoreUnavailable
from .branching import BRANCH_MARKER_HELP, Branches
from .engine import Checkpoint, Engine
from .faults import MissingClient, Shown
from .markers import ROLLBACK_MARKER_HELP
from .masking import mask
from .options import Options, StoreSettings, addoption
from .per_example import PerExample
from .registry import RegistrationError, Registry
from .reporting import Reporter
from .servers import Server
from .services import ImageUnavailable, orphans, shared
from .services.recovery import Holds, recover_all
from .signals import HELD_NOTE, Signals

SESSION_KEY = pytest.StashKey["RollbackSession"]()
AUTO_ORDER = ("docker", "local", "embedded")
NOTHING_PROVIDES = "pytest-rollback: {store}: no server could be had ({tried}); to get one: {how}"
ENTRY_POINT_GROUP = "pytest_rollback.adapters"
LATE_REGISTER = (
    "pytest-rollback: pytest_rollback_register in {where} is not called: that conftest.py was loaded "
    "after the session started; move the hook to the conftest.py at the root of the tests, or to a plugin"
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    addoption(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", ROLLBACK_MARKER_HELP)
    config.addinivalue_line("markers", BRANCH_MARKER_HELP)
    options = Options.from_config(config)
    session = RollbackSession(config, options)
    config.stash[SESSION_KEY] = session
    session.reporter = Reporter(session)
    config.pluginmanager.register(builtin, "rollback-builtin")
    config.pluginmanager.register(session, "rollback-session")
    config.pluginmanager.register(session.reporter, "rollback-reporter")
    config.pluginmanager.register(session.branches, "rollback-branches")
    config.pluginmanager.register(PerExample(session.engine), "rollback-per-example")
    session.signals.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.signals.uninstall()
        session.holds.release_all()  # normally released at session end; never leave a lock behind


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--rollback-recover``: put back what interrupted runs left, report, and exit without running tests."""
    options = Options.from_config(config)
    if options.docker_prune:
        from .services import docker

        for line in docker.prune(docker.project_hash(config.rootpath)):
            print(line)
        return 0
    if not options.recover:
        return None
    registry = Registry()
    if not config.pluginmanager.is_registered(builtin):
        builtin.pytest_rollback_register(registry)
    try:
        config.hook.pytest_rollback_register(registry=registry)
    except RegistrationError as exc:
        raise pytest.UsageError(str(exc)) from None
    recovers = {name: spec.recover for name, spec in registry.stores.items()}
    lines = orphans.reap(options.state_dir)  # servers a killed run started, if their watchdogs died too
    lines += _reap_containers()
    put_back, ok = recover_all(options.state_dir, recovers, dict(options.urls), options.timeout)
    lines += put_back
    if not lines:
        lines = [f"pytest-rollback: nothing to recover: no interrupted run left anything in {options.state_dir}"]
    for line in lines:
        print(line)
    return 0 if ok else 1


def _reap_containers() -> list[str]:
    """The containers of runs that are gone, removed (where a Docker engine answers)."""
    from .services import docker

    try:
        return docker.reap()
    except Exception as exc:  # the engine went away meanwhile: nothing to remove from it
        return [f"pytest-rollback: could not look for containers of interrupted runs: {exc!r}"]


def get_session(config: pytest.Config) -> RollbackSession:
    return config.stash[SESSION_KEY]


@pytest.hookimpl(trylast=True)
def pytest_rollback_checkpoint(adapter: Rollbackable, label: str | None) -> Any:
    return adapter.checkpoint(label)


@pytest.hookimpl(trylast=True)
def pytest_rollback_rollback(adapter: Rollbackable, checkpoint: Any) -> Any:
    result = adapter.rollback(checkpoint)
    return True if result is None else result


#: an async client fixture asked for by a fixture of a wider scope (pytest says only "ScopeMismatch")
ASYNC_SCOPE = (
    "pytest-rollback: {fixture} is function-scoped (its connections belong to the test's event loop), and "
    "the {scope}-scoped fixture {requester} asked for it; in a {scope} fixture use {sync} (session-scoped), "
    "or open {how} in that fixture, on its own event loop"
)
_ASYNC_FIXTURES = {
    "async_redis_client": ("redis_client", "redis.asyncio.Redis.from_url(redis_service.url)"),
    "async_mongo_client": ("mongo_client", "pymongo.AsyncMongoClient(mongo_service.url)"),
    "async_es_client": ("es_client", "elasticsearch.AsyncElasticsearch(elasticsearch_service.url)"),
}
_SCOPE_MISMATCH = re.compile(r"access the function scoped fixture (\w+) with a (\w+) scoped request object")
#: the key in ``workerinput`` under which the xdist controller passes the journals of the servers it holds
JOURNALS_KEY = "rollback_journals"
PUT_BACK_AT_END = (
    "pytest-rollback: {store}: put back {count} entries that tests changed outside their xdist worker's own "
    "share of the server (or that a crashed worker left)"
)


class RollbackSession:
    """The session's stores, services and checkpoint stack (registered as a plugin)."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.engine = Engine(config.hook, enabled=not options.disabled)
        self.engine.finish_owner = self._finish_owner
        self.engine.running = lambda: self.running
        self.engine.silent_owner = self._silent_owner
        self.branches = Branches(config, self.engine)
        self.registry = Registry()
        self.services: dict[str, Service] = {}
        #: servers declared with pytest_rollback.server(), by name, once one of their fixtures is used
        self.declared: dict[str, Server] = {}
        self.failures: dict[str, str] = {}
        #: the stores whose fault (a server gone, frozen, refusing us) was already reported
        self.shown = Shown()
        self.registered = False
        self._header_done = False
        self._early_lines: list[str] = []
        #: every service line of this process, with where it was shown: "header", "shown" (-v, at
        #: once) or "summary" (not yet: the rollback summary shows it)
        self.service_lines: list[tuple[str, str]] = []
        #: the node id of the test being run (None between tests): its service lines are followed
        #: by its file's progress prefix again, and the reporter puts restores down to it
        self.running: str | None = None
        #: the rollback summary and the changes sections (set at configure)
        self.reporter: Reporter | None = None
        #: the test whose level was pushed last (by its first fixture of function scope, or after its set-up)
        self._begun: pytest.Item | None = None
        worker = getattr(config, "workerinput", None)
        self.worker: str | None = worker.get("workerid") if worker else None
        #: xdist controller: the directory where workers record the servers they share
        self.shared_dir: str | None = None
        #: the servers this run holds but did not start: leases and crash journals
        self.holds = Holds(options.state_dir, options.timeout)
        self.signals = Signals()
        self.engine.held = self.signals.held

    # -- registration and services -------------------------------------------
    def register(self) -> None:
        if self.registered:
            return
        self.registered = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                register = ep.load()
                register(self.registry)
            except Exception as exc:
                raise pytest.UsageError(
                    f"pytest-rollback: the adapter entry point {ep.name!r} ({ep.value}) failed: {exc!r}"
                ) from None
        self._call_register()
        for adapter in self.registry.adapters:
            self.engine.activate(adapter)

    def _call_register(self) -> None:
        try:
            self.config.hook.pytest_rollback_register(registry=self.registry)
        except RegistrationError as exc:  # a user's mistake: one line, not an INTERNALERROR wall
            raise pytest.UsageError(str(exc)) from None

    def declare(self, server: Server) -> None:
        """Add a server declared with :func:`pytest_rollback.server` as a store of its own (once)."""
        self.register()
        if server.name in self.declared:
            return
        base = self.registry.stores.get(server.store)
        if base is None:
            raise StoreUnavailable(f"pytest-rollback: {server.name}: no store named {server.store!r} is registered")
        self.registry.add_store(server.store_spec(base))
        self.declared[server.name] = server

    def settings(self, store: str) -> StoreSettings:
        spec = self.registry.stores.get(store)
        declared = self.declared.get(store)
        base = declared.store if declared is not None else store
        return StoreSettings(
            store=base,
            provider=self.options.provider,
            url=declared.url if declared is not None else self.options.urls.get(store),
            image=(declared.image if declared is not None else None) or self.options.images.get(base)
            or (spec.default_image if spec else ""),
            allow_remote=self.options.allow_remote,
            worker=self.worker,
            config=self.config,
            extra={
                **({"embedded": self.options.mongo_embedded} if base == "mongo" else {}),
                **({"controller": True} if self._is_xdist_controller() else {}),
                "reuse": self.options.docker_reuse,
                **(declared.settings_extra() if declared is not None else {}),
            },
            state_dir=self.options.state_dir,
            timeout=self.options.timeout,
        )

    def service(self, store: str) -> Service:
        """The running service for ``store``, started on first use; raises StoreUnavailable."""
        self.register()
        if store in self.services:
            return self.services[store]
        if store in self.failures:
            raise StoreUnavailable(self.failures[store])
        spec = self.registry.stores.get(store)
        if spec is None:
            raise StoreUnavailable(f"pytest-rollback: no store named {store!r} is registered")
        try:
            service: Service | None = self.config.hook.pytest_rollback_make_service(store=store, config=self.config)
            if service is None:
                raise StoreUnavailable(f"pytest-rollback: {store}: no provider returned a service")
            try:
                held = self._hold(store, service)
                adapter = spec.make_adapter(service, self.settings(store))
                self.engine.activate(adapter)
                if service.owned and not service.extra.get("kept"):
                    self.engine.throwaway.add(store)  # stopped at the end: its last restores go to nobody
                if held and self.engine.enabled:
                    self.holds.journal(store, adapter)  # before any test can write
            except BaseException:
                service.stop()
                self.holds.finish(store, None) if store in self.holds.keepers else None
                raise
        except StoreUnavailable as exc:
            self.failures[store] = str(exc)
            raise
        except StoreFault as exc:  # the adapter found the server gone, frozen or refusing its credentials
            self.failures[store] = str(exc)
            raise StoreUnavailable(self.failures[store]) from None
        except Exception as exc:
            self.failures[store] = mask(f"pytest-rollback: {store}: could not start: {exc!r}")
            raise StoreUnavailable(self.failures[store]) from exc
        self.services[store] = service
        self._announce(service, adapter)
        return service

    def _hold(self, store: str, service: Service) -> bool:
        """Hold a server the plugin did not start (lease, recovery, journal); True when this run holds it."""
        if service.owned:
            return False
        if self.worker is not None:  # the controller holds it for the whole run; its journal keeps the flags
            journals = (getattr(self.config, "workerinput", None) or {}).get(JOURNALS_KEY) or {}
            if store in journals:
                service.extra["journal"] = journals[store]
            return False
        service.extra["journal"] = str(self.holds.hold(store, service, self.registry.stores[store].recover))
        self._say(self.holds.lines)
        return True

    def _say(self, lines: list[str]) -> None:
        """Show lines about the servers (in the header when it is not printed yet)."""
        for line in lines:
            if self._header_done:
                self._write_line(line)
            else:
                self._early_lines.append(line)
        lines.clear()

    def _announce(self, service: Service, adapter: Rollbackable) -> None:
        """The service line: in the header when the server started before it; else in the summary.

        With ``-v`` a server started during a test is also announced at once. A
        progress line of dots is never broken by it.
        """
        line = service.describe()
        strategy = getattr(adapter, "strategy", None)
        if strategy:
            line += f", {strategy} rollback"
        # what came before it: why auto fell back, the containers of interrupted runs removed
        for each in [*service.extra.pop("notes", []), line]:
            if not self._header_done:  # started in pytest_sessionstart: part of the header
                self._early_lines.append(each)
                self.service_lines.append((each, "header"))
            elif self.config.get_verbosity() > 0:
                self._write_line(each)
                self.service_lines.append((each, "shown"))
            else:
                self.service_lines.append((each, "summary"))

    def _write_line(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or self.config.get_verbosity() < -1:
            return
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            # -v: the running test's location, already written, for its result to follow again
            location = reporter.currentfspath if self.running is not None and reporter.showlongtestinfo else None
            if self.running is not None and not reporter.showfspath:
                reporter.currentfspath = -2  # -q shows dots without a file name: end their line first
            reporter.ensure_newline()
            if isinstance(location, str):
                reporter.write(line)
                reporter.currentfspath = None
                reporter.write_ensure_prefix(location)  # on a new line: the result is written after it
            elif self.running is not None and reporter.showfspath and self.config.get_verbosity() <= 0:
                # the test's result goes on a fresh progress line that names its file, not on a bare "."
                reporter.write(line)
                reporter.currentfspath = None
                reporter.write_fspath_result(self.running, "")
            else:
                reporter.write_line(line)

    @pytest.hookimpl(wrapper=True)
    def pytest_rollback_checkpoint(self, adapter: Rollbackable, label: str | None) -> Generator[None, Any, Any]:
        """Hold Ctrl-C while an adapter takes a checkpoint (never half-way through)."""
        with self.signals.held():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_rollback_rollback(self, adapter: Rollbackable, checkpoint: Any) -> Generator[None, Any, Any]:
        """Hold Ctrl-C while an adapter restores (never half-way through)."""
        with self.signals.held():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        """Every report of the plugin's, in one hook call (each hook implementation costs every test a
        call of its own): the async scope line, the changes section, the branch's outcome and the
        failing example's changes."""
        report = yield
        self._async_scope_line(call, report)
        if self.reporter is not None:
            self.reporter.add_section(item, call, report)
        self.branches.note_outcome(item, report)
        PerExample.add_section(item, call, report)
        return report

    @staticmethod
    def _async_scope_line(call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        """pytest's ScopeMismatch for an async client in a wider fixture becomes a line saying what to use."""
        if call.when == "setup" and report.failed:
            text = str(report.longrepr)
            found = _SCOPE_MISMATCH.search(text)
            if found and found.group(1) in _ASYNC_FIXTURES:
                sync, how = _ASYNC_FIXTURES[found.group(1)]
                requester = re.search(r"def (\w+)\(", text.split("Requesting fixture stack:", 1)[-1])
                report.longrepr = ASYNC_SCOPE.format(
                    fixture=found.group(1), scope=found.group(2), requester=requester.group(1) if requester else "?",
                    sync=sync, how=how,
                )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        """Before a test's fixtures end: whether the session's own teardowns follow (the last test), and
        the next test for the branches; after them, the branches' held states it does not need are
        restored."""
        self.engine.ending = nextitem is None
        self.branches.nextitem = nextitem
        try:
            result = yield
        finally:
            self._begun = None  # a test run again (a rerun of the same item) gets a level again
        self.branches.after_teardown()
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """A test none of whose fixtures is of function scope gets its level after its set-up."""
        result = yield
        if item is not self._begun and getattr(item, "fixturenames", None) is not None:
            self._begin(item)
        return result

    def _begin(self, item: pytest.Item) -> None:
        self._begun = item
        try:
            begin_test(self, item)
        except pytest.skip.Exception as exc:  # a branch that cannot start: the skip is the test's, not ours
            exc._use_item_location = True
            raise

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        """Remember the running test (for service lines and the summary's causes)."""
        self.running = nodeid

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        """No test is running any more."""
        self.running = None

    @pytest.hookimpl(trylast=True)
    def pytest_rollback_make_service(self, store: str, config: pytest.Config) -> Service | None:
        spec = self.registry.stores[store]
        settings = self.settings(store)
        if settings.url:
            if settings.provider not in ("auto", "external"):
                raise StoreUnavailable(
                    f"pytest-rollback: {store}: a URL is configured but the provider is {settings.provider!r}; "
                    "use --rollback-provider=external (or auto), or drop the URL"
                )
            return spec.providers["external"](settings)
        if settings.provider == "external":
            raise StoreUnavailable(
                f"pytest-rollback: {store}: provider 'external' needs a URL; pass --rollback-{store}-url"
            )
        order = AUTO_ORDER if settings.provider == "auto" else (settings.provider,)
        tried: list[str] = []
        fell_back: list[str] = []
        for name in order:
            provider = spec.providers.get(name)
            if provider is None:
                tried.append(f"{name}: not offered for {store}")
                continue
            try:
                service: Service = provider(settings)
            except MissingClient:  # no provider can help: say what to install, start nothing
                raise
            except ImageUnavailable as exc:  # the engine answers, the image cannot be had: say so, go on
                tried.append(f"{name}: {exc}")
                fell_back.append(f"pytest-rollback: {store}: not via {name}: {exc}")
            except StoreUnavailable as exc:
                tried.append(f"{name}: {exc}")
            else:
                if fell_back:
                    service.extra["notes"] = [f"{line}; using {name}" for line in fell_back] + list(
                        service.extra.get("notes") or [])
                return service
        raise StoreUnavailable(NOTHING_PROVIDES.format(store=store, tried="; ".join(tried), how=spec.how_to_get))

    # -- session -------------------------------------------------------------
    def _is_xdist_controller(self) -> bool:
        if self.worker is not None:
            return False
        dist = getattr(self.config.option, "dist", "no")
        return bool(getattr(self.config.option, "numprocesses", None)) and dist != "no"

    def pytest_plugin_registered(self, plugin: object) -> None:
        if self.registered and plugin is not builtin and hasattr(plugin, "pytest_rollback_register"):
            where = getattr(plugin, "__file__", None) or repr(plugin)
            warnings.warn(
                pytest.PytestConfigWarning(LATE_REGISTER.format(where=where)),
                stacklevel=1,
            )

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.worker is None:  # before starting anything: end what a killed run left
            self._early_lines += orphans.reap(self.options.state_dir)
        controller = self._is_xdist_controller()
        if not controller:
            self.register()
        else:  # the workers run the tests, each with its own stores; only check the URLs here
            self._call_register()
        for store in self.registry.stores:
            if self.options.urls.get(store):
                try:
                    if controller:
                        self._keep_whole_server(store)
                    else:
                        self.service(store)
                except StoreUnavailable as exc:
                    for done in self._finish():  # pytest ends the session without sessionfinish: put back now
                        sys.stderr.write(mask(done) + "\n")
                    raise pytest.UsageError(str(exc)) from None
        if self.worker is None:
            held = {k.lease.dir.name for k in self.holds.keepers.values()}
            pending = self.holds.others_pending(held)
            if pending:
                self._say([pending])

    def _keep_whole_server(self, store: str) -> None:
        """xdist controller: hold a configured server for the whole run and keep all of it.

        The workers roll back their own databases (or indices) after every test;
        the controller takes the server's whole state before any worker starts,
        journals it, and puts every database back at the end of the run.
        """
        spec = self.registry.stores[store]
        settings = self.settings(store)
        service = spec.providers["external"](settings)
        if not self._hold(store, service) or self.options.disabled:
            return
        keeper = self.holds.keepers[store]
        adapter = spec.make_adapter(service, settings)
        try:
            keeper.root = adapter.checkpoint("the run's start")
            keeper.adapter = adapter
            self.holds.journal(store, adapter)
        except BaseException:
            close = getattr(adapter, "close", None)
            if close is not None:
                close()
            self.holds.finish(store, None)
            raise

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller: tell each worker where shared servers and branch trees are recorded."""
        node.workerinput[shared.WORKER_INPUT_KEY] = self._controller_dir()
        node.workerinput[JOURNALS_KEY] = {s: str(k.lease.journal) for s, k in self.holds.keepers.items()}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """xdist controller: under ``--dist load``, ``loadscope``, ``loadfile`` or ``loadgroup``, keep trees whole."""
        dist = getattr(config.option, "dist", "no")
        if dist not in ("load", "loadscope", "loadfile", "loadgroup"):
            return None
        return xdist_groups.make_scheduler(config, log, self._controller_dir(), dist)

    def _controller_dir(self) -> str:
        """xdist controller: this run's shared directory, made on first use."""
        if self.shared_dir is None:
            self.shared_dir = shared.make_dir()
        return self.shared_dir

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Put every store back (held against a second Ctrl-C), stop the servers, release the leases."""
        with self.signals.held(HELD_NOTE, interrupt_after=False):
            lines = self._finish()
        for line in lines:
            sys.stderr.write(mask(line) + "\n")

    def _finish(self) -> list[str]:
        lines: list[str] = []
        if self.shared_dir is not None:  # every worker is done: stop the servers they shared
            lines += shared.stop_all(self.shared_dir, self.options.state_dir)
            self.shared_dir = None
        failed: dict[str, BaseException] = {}
        for name in list(self.engine.adapters)[::-1]:
            try:
                self.engine.deactivate(name)
            except Exception as exc:
                failed[name] = exc
                if name not in self.holds.keepers and exc not in self.shown:  # a fault a test reported
                    lines.append(str(exc))
        for store, keeper in list(self.holds.keepers.items()):
            if keeper.adapter is not None:  # xdist controller: the whole server, after every worker
                failed.pop(store, None)
                try:
                    report = keeper.adapter.rollback(keeper.root)
                    if isinstance(report, RestoreReport) and report.restored:
                        lines.append(PUT_BACK_AT_END.format(store=store, count=report.restored))
                    close = getattr(keeper.adapter, "close", None)
                    if close is not None:
                        close()
                except Exception as exc:
                    failed[store] = exc
            lines += self.holds.finish(store, failed.get(store))
        for service in self.services.values():
            try:
                service.stop()
            except Exception as exc:
                lines.append(f"pytest-rollback: {service.name}: stopping the server failed: {exc!r}")
        self.services.clear()
        return lines

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        mode = "off (--no-rollback)" if self.options.disabled else "on"
        lines = [f"rollback: {mode}, provider {self.options.provider} (choices: {', '.join(PROVIDERS)})"]
        lines += self._early_lines
        self._early_lines = []
        return lines

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._header_done = True
        if self._early_lines:  # no header was printed (-q): service lines go to the summary
            shown = [(line, "summary" if where == "header" else where) for line, where in self.service_lines]
            self.service_lines = shown
            others = [line for line in self._early_lines if line not in {ln for ln, _ in shown}]
            for line in others:  # recoveries and the like: said now
                self._write_line(line)
        self._early_lines = []

    # -- scopes --------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function" or not self.engine.enabled:
            if fixturedef.scope == "function" and request.node is not self._begun:
                try:  # the test's first fixture of its own: its level comes first
                    self._begin(request.node)
                except (Exception, pytest.skip.Exception, pytest.fail.Exception) as exc:
                    # as pytest's own set-up of a fixture that raises (a skip, a failure), so it stays usable
                    fixturedef.cached_result = (None, fixturedef.cache_key(request), (exc, exc.__traceback__))  # type: ignore[arg-type]
                    raise
            return (yield)
        label = self._level_label(fixturedef)
        with self.shown.one_line():
            cp = self.engine.push(label, fixturedef.scope, owner=fixturedef)
        cp.request = request  # type: ignore[attr-defined]
        try:
            return (yield)
        except BaseException:
            if cp.alive:
                self.engine.pop(cp)
            raise

    def _silent_owner(self, owner: Any) -> bool:
        """Whether ``owner`` (a level's fixture) is no fixture of the project's (under the rootdir): this
        plugin's and other installed plugins' (an event loop policy) are taken not to read the stores at
        their teardown; the project's may."""
        func = getattr(owner, "func", None)
        if str(getattr(func, "__module__", "")).startswith("pytest_rollback."):
            return True
        code = getattr(func, "__code__", None)
        if code is None:
            return False
        path = Path(code.co_filename)
        return not path.is_relative_to(self.config.rootpath) or "site-packages" in path.parts

    def _level_label(self, fixturedef: pytest.FixtureDef[Any]) -> str:
        """``session fixture seed_catalogue``: a fixture of the user's, by name; another plugin's or an
        internal one (``_name``) by its scope only, which is all the user can act on."""
        code = getattr(fixturedef.func, "__code__", None)
        path = Path(code.co_filename) if code is not None else None
        own = path is not None and path.is_relative_to(self.config.rootpath) and "site-packages" not in path.parts
        if own and not fixturedef.argname.startswith("_"):
            return f"{fixturedef.scope} fixture {fixturedef.argname}"
        return f"{fixturedef.scope} scope"

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
        if fixturedef.scope == "function":
            return
        cp = self.engine.find_owner(fixturedef)
        if cp is None:
            return
        cp.owner = None  # finished: no longer to be torn down by the engine
        problems: list[str] = []
        with self.shown.one_line(repeat=False):
            problems = self.engine.pop(cp)
        if problems:
            raise RollbackError("; ".join(problems))

    def _finish_owner(self, cp: Checkpoint) -> None:
        fixturedef = cp.owner
        request = getattr(cp, "request", None)
        if fixturedef is not None and request is not None:
            fixturedef.finish(request)


from .fixtures import (  # noqa: E402  (fixtures are found in the plugin module)
    async_es_client,
    async_mongo_client,
    async_redis_client,
    begin_test,
    elasticsearch_service,
    es_client,
    mongo_client,
    mongo_db,
    mongo_service,
    redis_client,
    redis_service,
    rollback,
)

__all__ = [
    "async_es_client",
    "async_mongo_client",
    "async_redis_client",
    "elasticsearch_service",
    "es_client",
    "mongo_client",
    "mongo_db",
    "mongo_service",
    "redis_client",
    "redis_service",
    "rollback",
]
