"""A conformance suite for store adapters: subclass it to check yours against the guarantees.

pytest-rollback trusts an adapter (see :class:`pytest_rollback.Rollbackable`) to
put its store back *exactly*, with tokens that stay usable, nested checkpoints,
and no bookkeeping of its own in the store's visible data. This module checks
that, against your store, with the plugin's own call patterns::

    import pytest
    from pytest_rollback.testing import AdapterConformance, MappingStore

    from myapp.testing import MemoryAdapter


    class TestMemoryAdapter(AdapterConformance):
        @pytest.fixture
        def data(self):
            return {}

        @pytest.fixture
        def store(self, data):
            return MappingStore(data)

        @pytest.fixture
        def adapter(self, data):
            return MemoryAdapter("memory", data)

The base class is not named ``Test...``, so pytest collects its tests only in
your subclass. Your subclass (or a ``conftest.py`` it can see) provides two
function-scoped fixtures:

``adapter``
    A new adapter under test, over a clean store (empty, or at a fixed state),
    for every test. Tear it down as you need (``close()`` it, empty the store);
    ``test_close`` calls ``close()`` itself, so a teardown that closes the
    adapter again must find a second call harmless.
``store``
    A :class:`StoreDriver`: how the suite writes to the same store the adapter
    rolls back, and reads the store's whole logical state back.

Every test is a scenario of writes, checkpoints and rollbacks that ends by
comparing the whole state (``store.read_all()``) with what it must be. A failure
names the guarantee that broke and lists what differs, for example::

    exact restore: after rollback(token) the store differs from the checkpoint (1 difference):
      key 'k003': 'value 3' at checkpoint, now absent

The tests of optional methods (``release``, ``observe``, ``changes``,
``close``) are skipped for an adapter without them. To leave out a check that
cannot hold for your store, override its method in your subclass with one
marked ``@pytest.mark.skip(reason=...)``; to make the long test shorter, set
:attr:`AdapterConformance.many_writes`.
"""

from __future__ import annotations

import collections
import copy
import random
from collections.abc import Callable, Hashable, Mapping, MutableMapping, Sequence
from typing import Any, ClassVar, NoReturn, Protocol, runtime_checkable

import pytest

from .api import Changes, Observation, RestoreReport, Rollbackable

__all__ = ["AdapterConformance", "MappingStore", "StoreDriver"]


@runtime_checkable
class StoreDriver(Protocol):
    """How the conformance suite changes a store and reads it back (the ``store`` fixture).

    Keys are short ASCII names (letters and digits, such as ``"k007"``); values
    are short strings, some empty or non-ASCII (``"värde ☃"``). ``write`` and
    ``delete`` act on the same data the adapter rolls back, as the code under
    test would (through any client or connection the adapter sees).

    Optional: ``change_name(key: str) -> Hashable``, the name under which the
    adapter's ``changes(token)`` reports ``key`` (for the Redis adapter,
    ``f"0:{key}"``); without it a key is reported under its own name.

    Optional capabilities (a test that needs one is skipped, saying so, for a
    driver without it):

    ``define(name: str, value: str | None) -> None``
        Set a store-level definition (a template, a setting, a schema object)
        to ``value``, or remove it with ``None``; ``read_all()`` shows it.
    ``close(key: str) -> None`` / ``reopen(key: str) -> None``
        Take the container that holds ``key`` offline and back (an
        Elasticsearch closed index); ``read_all()`` shows whether it is closed.
    """

    def write(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``, creating it or replacing its value."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (the suite only deletes keys that exist)."""

    def read_all(self) -> Mapping[Any, Any]:
        """The store's whole logical state as code under test sees it, comparable with ``==``.

        It must show every ``write`` and ``delete``, and everything else the
        adapter must not leave behind (tables, collections, indices, metadata
        of the store's own), keyed however suits the store. Read it fresh, not
        from a cache (refresh a search index first).
        """


class MappingStore:
    """A :class:`StoreDriver` over a mutable mapping: for adapters of in-memory data.

    :param data: the mapping the adapter under test rolls back.
    """

    def __init__(self, data: MutableMapping[Any, Any]) -> None:
        self.data = data

    def write(self, key: str, value: str) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        del self.data[key]

    def read_all(self) -> dict[Any, Any]:
        """A deep copy of the mapping's content."""
        return copy.deepcopy(dict(self.data))

    # the optional capabilities (see "containers that appear without a change event" below): a container
    # is a key holding a dict, a bounded one a key holding a deque, a view a key holding its definition
    def make_empty_container(self, name: str) -> None:
        self.data[name] = {}

    def drop_container(self, name: str) -> None:
        del self.data[name]

    def make_bounded(self, name: str, limit: int) -> None:
        self.data[name] = collections.deque(maxlen=limit)

    def append(self, name: str, value: str) -> None:
        self.data[name].append(value)

    def make_view(self, name: str, definition: str) -> None:
        self.data[name] = ("view", definition)


_SHOWN_DIFFERENCES = 10
_SEED_KEYS = 12


def _differences(expected: Mapping[Any, Any], actual: Mapping[Any, Any], then: str) -> list[str]:
    """One line per key whose value differs, e.g. ``key 'k3': 'v' at checkpoint, now absent``."""
    differing = Observation("", expected).diff(Observation("", actual), limit=None, then=then)
    return ["key " + line for line in differing]


def _fail(guarantee: str, what: str, details: Sequence[str] = ()) -> NoReturn:
    """Fail the test with ``<guarantee>: <what>`` and indented detail lines, without a traceback."""
    __tracebackhide__ = True
    shown = list(details[:_SHOWN_DIFFERENCES])
    if len(details) > _SHOWN_DIFFERENCES:
        shown.append(f"... and {len(details) - _SHOWN_DIFFERENCES} more")
    pytest.fail("\n  ".join([f"{guarantee}: {what}", *shown]), pytrace=False)


def _call(guarantee: str, call: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; an exception from it fails the test naming the guarantee and the call (chained)."""
    __tracebackhide__ = True
    try:
        return fn(*args)
    except Exception as exc:
        raise AssertionError(f"{guarantee}: {call} raised {exc!r}") from exc


class _Scenario:
    """One test's adapter and store, with every call checked and every failure worded for its guarantee."""

    def __init__(self, guarantee: str, adapter: Any, store: Any) -> None:
        __tracebackhide__ = True
        self.guarantee = guarantee
        self.adapter = adapter
        self.store = store
        if not isinstance(store, StoreDriver):
            _fail(
                "store fixture",
                f"the `store` fixture gave {store!r}, which is not a StoreDriver: it needs write(key, value), "
                "delete(key) and read_all() (see pytest_rollback.testing.StoreDriver)",
            )
        if not callable(getattr(adapter, "checkpoint", None)) or not callable(getattr(adapter, "rollback", None)):
            _fail(
                "adapter protocol",
                f"the `adapter` fixture gave {adapter!r}, which has no checkpoint(label) and rollback(token) methods",
            )
        #: The keys the suite's writes have put in the store, as far as they are still there.
        self.live: set[str] = set()
        #: Every token taken, with ``live`` at the time (kept referenced: no id is reused).
        self._tokens: list[tuple[Any, set[str]]] = []

    # -- the store ---------------------------------------------------------------
    def state(self) -> dict[Any, Any]:
        """``store.read_all()``, checked to be a mapping."""
        __tracebackhide__ = True
        state = _call(self.guarantee, "store.read_all()", self.store.read_all)
        if not isinstance(state, Mapping):
            _fail("store fixture", f"store.read_all() returned {state!r}, not a mapping")
        return dict(state)

    def write(self, key: str, value: str) -> None:
        __tracebackhide__ = True
        _call(self.guarantee, f"store.write({key!r}, {value!r})", self.store.write, key, value)
        self.live.add(key)

    def delete(self, key: str) -> None:
        __tracebackhide__ = True
        _call(self.guarantee, f"store.delete({key!r})", self.store.delete, key)
        self.live.discard(key)

    def seed(self) -> dict[Any, Any]:
        """Write the keys ``k000`` to ``k011`` (one value empty, one non-ASCII); return the state."""
        __tracebackhide__ = True
        for i in range(_SEED_KEYS):
            self.write(f"k{i:03d}", "" if i == 1 else "värde ☃" if i == 2 else f"value {i}")
        return self.state()

    def seeded(self) -> list[str]:
        """The seeded keys still in the store, in order."""
        return sorted(k for k in self.live if k.startswith("k"))

    def change(self, tag: str, start: int = 0) -> None:
        """Add two keys, modify two seeded keys and delete the two after them (from the ``start``-th)."""
        __tracebackhide__ = True
        keys = self.seeded()[start : start + 4]
        self.write(f"new{tag}a", f"added by {tag}")
        self.write(f"new{tag}b", "")
        for key in keys[:2]:
            self.write(key, f"modified by {tag}")
        for key in keys[2:4]:
            self.delete(key)

    def change_name(self, key: str) -> Hashable:
        name = getattr(self.store, "change_name", None)
        return key if name is None else name(key)

    # -- the adapter -------------------------------------------------------------
    def checkpoint(self, label: str | None) -> Any:
        __tracebackhide__ = True
        token = _call(self.guarantee, f"checkpoint({label!r})", self.adapter.checkpoint, label)
        if token is None:
            _fail(
                "adapter protocol",
                f"checkpoint({label!r}) returned None; the plugin takes None for 'no checkpoint' "
                "(pytest_rollback_checkpoint is a first-result hook): return a token object",
            )
        self._tokens.append((token, set(self.live)))
        return token

    def rollback(self, token: Any, call: str = "rollback(token)") -> None:
        __tracebackhide__ = True
        result = _call(self.guarantee, call, self.adapter.rollback, token)
        for taken, live in self._tokens:
            if taken is token:
                self.live = set(live)
        if isinstance(result, RestoreReport) and result.store != self.adapter.name:
            _fail(
                "restore report",
                f"{call} returned a RestoreReport for store {result.store!r}, but the adapter is named "
                f"{self.adapter.name!r}",
            )

    def release(self, token: Any, call: str = "release(token)") -> None:
        __tracebackhide__ = True
        _call(self.guarantee, call, self.adapter.release, token)

    def observe(self, call: str = "observe()") -> Observation:
        __tracebackhide__ = True
        observation = _call(self.guarantee, call, self.adapter.observe)
        if not isinstance(observation, Observation):
            _fail(self.guarantee, f"{call} returned {observation!r}, not a pytest_rollback.Observation")
        return observation

    def changes(self, token: Any, call: str) -> Changes:
        __tracebackhide__ = True
        changes = _call(self.guarantee, call, self.adapter.changes, token)
        if not isinstance(changes, Changes):
            _fail(self.guarantee, f"{call} returned {changes!r}, not a pytest_rollback.Changes")
        if changes.store != self.adapter.name:
            _fail(self.guarantee, f"{call} names the store {changes.store!r}, but the adapter is named "
                  f"{self.adapter.name!r}")
        return changes

    def has(self, method: str) -> bool:
        return callable(getattr(self.adapter, method, None))

    # -- comparisons ---------------------------------------------------------------
    def expect(self, expected: Mapping[Any, Any], what: str, then: str = "at checkpoint") -> None:
        """Fail with ``what`` and the differences unless the store's state equals ``expected``."""
        __tracebackhide__ = True
        now = self.state()
        if now != expected:
            lines = _differences(expected, now, then)
            _fail(self.guarantee, f"{what} ({len(lines)} difference{'s' if len(lines) != 1 else ''}):", lines)


def _skip_without(scenario: _Scenario, method: str) -> None:
    if not scenario.has(method):
        pytest.skip(f"the adapter has no {method}()")



# -- containers that appear without a change event, bounded containers, views (MongoDB, issue 12) -------------
#
# Optional capabilities of a StoreDriver; a test whose driver lacks one is skipped, naming it.
#
# ``make_empty_container(name: str) -> None``
#     Make the container ``name`` (collection, table, index) exist, empty, by the write
#     that creates one on the store without announcing it, where there is such a write
#     (MongoDB on SecantusDB: an ``update_one`` that matches nothing); else by the plainest
#     create. ``read_all()`` shows an empty container.
# ``drop_container(name: str) -> None``
#     Remove the container (or view) ``name`` and what it holds.
# ``make_bounded(name: str, limit: int) -> None`` and ``append(name: str, value: str) -> None``
#     A container that keeps only its ``limit`` newest items and evicts the oldest on
#     ``append`` once full, announced or not (a capped collection). ``read_all()`` shows its
#     items in their order.
# ``make_view(name: str, definition: str) -> None``
#     A stored definition with no data of its own (a view), ``definition`` a short word the
#     driver makes part of it (a view's filter). ``read_all()`` shows every view's definition.


def _skip_unless_driver(store: Any, *methods: str) -> None:
    """Skip the test, naming what is missing, unless the store driver has every optional ``methods``."""
    missing = [m for m in methods if not callable(getattr(store, m, None))]
    if missing:
        pytest.skip(f"the store driver has no {'(), '.join(missing)}() (an optional StoreDriver capability)")


def _drive(run: _Scenario, method: str, *args: Any) -> None:
    """``store.<method>(*args)`` of an optional capability; an exception fails the test naming the call."""
    __tracebackhide__ = True
    call = f"store.{method}({', '.join(map(repr, args))})"
    _call(run.guarantee, call, getattr(run.store, method), *args)


class _ContainerCases:
    """Cases for what exists without being announced, what a store evicts by itself, and views."""

    def test_container_made_without_an_event(self, adapter: Any, store: StoreDriver) -> None:
        """A container that a write made exist silently is removed by a rollback, and one that existed at a
        checkpoint and was dropped after is made again (whatever makes a container exist is state)."""
        run = _Scenario("silent containers", adapter, store)
        _skip_unless_driver(run.store, "make_empty_container", "drop_container")
        seeded = run.seed()
        outer = run.checkpoint("module fixture")
        _drive(run, "make_empty_container", "side0")
        run.rollback(outer, "rollback(token) after a container was made without an event")
        run.expect(seeded, "after rollback(token) a container made without an event is still there")
        _drive(run, "make_empty_container", "side1")
        with_side = run.state()
        inner = run.checkpoint("test")
        _drive(run, "drop_container", "side1")
        run.write("k000", "written by the test")
        run.rollback(inner, "rollback(inner) after the container made without an event was dropped")
        run.expect(with_side, "after rollback(inner) the container that existed at the checkpoint is missing")
        run.rollback(outer, "rollback(outer)")
        run.expect(seeded, "after rollback(outer) the container made after it is still there")

    def test_bounded_container_evictions(self, adapter: Any, store: StoreDriver) -> None:
        """Items a full bounded container evicted by itself come back, in their order."""
        run = _Scenario("bounded container", adapter, store)
        _skip_unless_driver(run.store, "make_bounded", "append")
        run.seed()
        _drive(run, "make_bounded", "ring", 4)
        for i in range(4):
            _drive(run, "append", "ring", f"item {i}")
        full = run.state()
        token = run.checkpoint("test")
        for n in range(1, 3):
            for i in range(2 * n + 1):
                _drive(run, "append", "ring", f"new {n}.{i}")
            run.rollback(token, f"rollback number {n} after appends that evicted the oldest items")
            run.expect(full, f"after rollback number {n} the bounded container differs (items or their order)")

    def test_views(self, adapter: Any, store: StoreDriver) -> None:
        """Views are restored with their definitions: one redefined, one dropped, one added."""
        run = _Scenario("views", adapter, store)
        _skip_unless_driver(run.store, "make_view", "drop_container")
        run.seed()
        _drive(run, "make_view", "view0", "a")
        _drive(run, "make_view", "view1", "b")
        at_checkpoint = run.state()
        token = run.checkpoint("test")
        _drive(run, "drop_container", "view0")
        _drive(run, "make_view", "view0", "c")
        _drive(run, "drop_container", "view1")
        _drive(run, "make_view", "view2", "a")
        run.rollback(token)
        run.expect(at_checkpoint, "after rollback(token) the views differ from the checkpoint")

    def test_observe_sees_silent_containers(self, adapter: Any, store: StoreDriver) -> None:
        """``observe()`` (what ``--rollback-verify`` compares) sees a container made without an event."""
        run = _Scenario("observe", adapter, store)
        _skip_without(run, "observe")
        _skip_unless_driver(run.store, "make_empty_container", "drop_container")
        run.seed()
        first = run.observe()
        _drive(run, "make_empty_container", "side0")
        if run.observe().state == first.state:
            _fail("observe", "the observation did not change after store.make_empty_container('side0'): "
                  "verify could not see a container a rollback left behind")
        _drive(run, "drop_container", "side0")



# -- issue 12 (Elasticsearch): definitions, closed containers ---------------------------
def _needs_driver(*methods: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test as needing the optional driver ``methods`` (``driver_needs``: for counting them)."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        test.driver_needs = methods  # type: ignore[attr-defined]
        return test

    return mark


class _DefinitionsAndClosedContainers:
    """Cases the randomized isolation suite found leaking in the Elasticsearch adapter (issue 12)."""

    @_needs_driver("define")
    def test_definitions_after_the_adapter_dropped_rolled_past_checkpoints(self, adapter: Any, store: Any) -> None:
        """After a rollback past several checkpoints (the adapter drops their bookkeeping, which may move a
        change counter of the store backwards) and empty checkpoint/rollback pairs, definitions changed
        afterwards are still found and undone: change detection must not rest on a counter that can repeat."""
        _skip_unless_driver(store, "define")
        run = _Scenario("definitions", adapter, store)
        run.seed()
        _call("definitions", "store.define('d1', 'one')", store.define, "d1", "one")
        outer = run.checkpoint("module fixture")
        at_outer = run.state()
        for n in range(3):
            run.change(f"inner{n}", start=2 * n)
            run.checkpoint(f"rollback.checkpoint() {n}")
        run.change("last", start=6)
        run.rollback(outer, "rollback(outer), past three newer checkpoints")
        run.expect(at_outer, "after rollback(outer) past three checkpoints the store differs from the outer one")
        for n in range(2):
            run.rollback(run.checkpoint(f"empty branch {n}"), f"rollback of the empty branch {n}")
        _call("definitions", "store.define('d1', None)", store.define, "d1", None)
        _call("definitions", "store.define('d2', 'two')", store.define, "d2", "two")
        _call("definitions", "store.define('d3', 'three')", store.define, "d3", "three")
        run.rollback(outer, "rollback(outer) after definitions changed")
        run.expect(at_outer, "definitions changed after the adapter's own clean-up were not undone")

    @_needs_driver("close", "reopen")
    def test_a_container_closed_at_the_checkpoint(self, adapter: Any, store: Any) -> None:
        """A container closed at the checkpoint, reopened, written and closed again: restored exactly, or
        the adapter says (a RollbackWarning) that it could not; never a silent difference."""
        _skip_unless_driver(store, "close", "reopen")
        from .api import RollbackWarning

        run = _Scenario("closed container", adapter, store)
        run.seed()
        _call(run.guarantee, "store.close('k000')", store.close, "k000")
        token = run.checkpoint("test with a closed container")
        at_checkpoint = run.state()
        _call(run.guarantee, "store.reopen('k000')", store.reopen, "k000")
        run.change("test")
        _call(run.guarantee, "store.close('k000')", store.close, "k000")
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.rollback(token)
        if run.state() != at_checkpoint and not any(issubclass(w.category, RollbackWarning) for w in caught):
            run.expect(at_checkpoint, "after rollback(token) the store differs from the checkpoint, and the "
                       "adapter gave no RollbackWarning")


class AdapterConformance(_ContainerCases, _DefinitionsAndClosedContainers):
    """The guarantees of :class:`pytest_rollback.Rollbackable`, as tests to inherit.

    Subclass it as ``class Test<Something>(AdapterConformance)`` and provide the
    ``adapter`` and ``store`` fixtures (see the module's documentation). Each
    test method checks one guarantee; its failure message starts with the
    guarantee's name.
    """

    #: How many writes ``test_many_writes`` makes between its checkpoint and rollback.
    many_writes: ClassVar[int] = 500

    def test_adapter_protocol(self, adapter: Any, store: StoreDriver) -> None:
        """The adapter is a ``Rollbackable`` with a string name, and its optional members are methods."""
        run = _Scenario("adapter protocol", adapter, store)
        if not isinstance(adapter, Rollbackable):
            _fail("adapter protocol", f"{adapter!r} is not a pytest_rollback.Rollbackable (name, checkpoint, rollback)")
        if not isinstance(adapter.name, str) or not adapter.name:
            _fail("adapter protocol", f"the adapter's name is {adapter.name!r}; it must be a non-empty string")
        for method in ("observe", "changes", "release", "close"):
            member = getattr(adapter, method, None)
            if member is not None and not callable(member):
                _fail("adapter protocol", f"the adapter's {method} is {member!r}, not a method")
        before = run.state()
        for label in (None, "test tests/test_a.py::test_x"):
            token = run.checkpoint(label)
            run.rollback(token, f"rollback(checkpoint({label!r}))")
        run.expect(before, "checkpoint and rollback of an untouched store changed it", then="before")

    def test_store_fixture_sees_writes(self, adapter: Any, store: StoreDriver) -> None:
        """The ``store`` fixture works: ``read_all()`` shows a write, a change and a delete.

        If this fails, fix the fixture first: every other test relies on it.
        """
        run = _Scenario("store fixture", adapter, store)
        run.write("k000", "first")  # a key that stays: the table, collection or index it needs stays too
        empty = run.state()
        run.write("probe", "one")
        one = run.state()
        if one == empty:
            _fail("store fixture", "store.read_all() does not show store.write('probe', 'one')")
        run.write("probe", "two")
        if run.state() == one:
            _fail("store fixture", "store.read_all() does not show a new value written to an existing key")
        if run.state() != run.state():
            _fail("store fixture", "two store.read_all() in a row differ: it must read the state, not its timing")
        run.delete("probe")
        run.expect(empty, "store.read_all() after store.delete('probe') differs from the state before the write",
                   then="before")

    def test_untouched_restore(self, adapter: Any, store: StoreDriver) -> None:
        """A rollback after no writes (most tests, for most stores) leaves the store as it is."""
        run = _Scenario("untouched store", adapter, store)
        seeded = run.seed()
        token = run.checkpoint("test untouched")
        run.rollback(token)
        run.expect(seeded, "rollback(token) after no writes changed the store")
        run.rollback(token, "a second rollback(token) after no writes")
        run.expect(seeded, "a second rollback(token) after no writes changed the store")

    def test_exact_restore(self, adapter: Any, store: StoreDriver) -> None:
        """Keys added, modified and deleted after a checkpoint are all undone by rolling back to it."""
        run = _Scenario("exact restore", adapter, store)
        seeded = run.seed()
        token = run.checkpoint("test exact")
        run.change("test")
        run.rollback(token)
        run.expect(seeded, "after rollback(token) the store differs from the checkpoint")

    def test_exact_restore_of_the_initial_state(self, adapter: Any, store: StoreDriver) -> None:
        """A checkpoint of the clean store (often empty: a falsy token) is restored exactly."""
        run = _Scenario("exact restore", adapter, store)
        initial = run.state()
        token = run.checkpoint(None)
        run.seed()
        run.change("test")
        run.rollback(token)
        run.expect(initial, "after rollback(token) the store differs from the clean store's checkpoint")

    def test_same_token_again_and_again(self, adapter: Any, store: StoreDriver) -> None:
        """A token stays usable after a rollback: a module's checkpoint is restored after each of its tests."""
        run = _Scenario("same token", adapter, store)
        seeded = run.seed()
        token = run.checkpoint("module fixture data")
        for n in range(1, 4):
            run.change(f"test{n}", start=2 * n)
            run.rollback(token, f"rollback number {n} to the same token")
            run.expect(seeded, f"after rollback number {n} to the same token the store differs from the checkpoint")

    def test_nested_checkpoints(self, adapter: Any, store: StoreDriver) -> None:
        """Checkpoints nest: restore the inner one (again), then the outer one, then use the outer one again."""
        run = _Scenario("nested checkpoints", adapter, store)
        run.seed()
        outer = run.checkpoint("module fixture")
        at_outer = run.state()
        run.change("module", start=0)
        inner = run.checkpoint("test")
        at_inner = run.state()
        run.change("test", start=2)
        run.rollback(inner, "rollback(inner)")
        run.expect(at_inner, "after rollback(inner) the store differs from the inner checkpoint")
        run.change("test2", start=4)
        run.rollback(inner, "a second rollback(inner)")
        run.expect(at_inner, "after a second rollback(inner) the store differs from the inner checkpoint")
        run.rollback(outer, "rollback(outer) after rollback(inner)")
        run.expect(at_outer, "after rollback(outer) the store differs from the outer checkpoint")
        run.write("k000", "after the outer restore")
        run.rollback(outer, "a second rollback(outer)")
        run.expect(at_outer, "after a second rollback(outer) the store differs from the outer checkpoint")
        newer = run.checkpoint("next test")
        run.write("k001", "written by the next test")
        run.rollback(newer, "rollback(newer), a checkpoint taken after rollback(outer)")
        run.expect(at_outer, "after rollback(newer) the store differs from the checkpoint taken after rollback(outer)")
        run.rollback(outer, "rollback(outer) after rollback(newer)")
        run.expect(at_outer, "after rollback(outer) the store differs from the outer checkpoint")

    def test_rollback_past_a_newer_checkpoint(self, adapter: Any, store: StoreDriver) -> None:
        """Rolling back to an outer token while an inner one is live undoes the writes made after both."""
        run = _Scenario("nested checkpoints", adapter, store)
        run.seed()
        outer = run.checkpoint("class fixture")
        at_outer = run.state()
        run.change("class", start=0)
        run.checkpoint("test")
        run.change("test", start=2)
        run.checkpoint("rollback.checkpoint()")
        run.write("k008", "after the innermost checkpoint")
        run.rollback(outer, "rollback(outer) with two newer checkpoints")
        run.expect(at_outer, "after rollback(outer), past two newer checkpoints, the store differs from the outer one")
        again = run.checkpoint("next test")
        run.change("next", start=4)
        run.rollback(again, "rollback(token) of a checkpoint taken after rolling back past newer ones")
        run.expect(at_outer, "after rolling back past newer checkpoints, a new checkpoint is not restored exactly")

    def test_release(self, adapter: Any, store: StoreDriver) -> None:
        """``release(token)`` (newest first, as the plugin does) changes nothing; older tokens still restore."""
        run = _Scenario("release", adapter, store)
        _skip_without(run, "release")
        run.seed()
        outer = run.checkpoint("module fixture")
        at_outer = run.state()
        run.change("module", start=0)
        inner = run.checkpoint("test 1")
        at_inner = run.state()
        run.change("test1", start=2)
        run.rollback(inner, "rollback(inner)")
        run.release(inner, "release(inner) after rollback(inner)")
        run.expect(at_inner, "release(inner) changed the store", then="before")
        run.change("module2", start=4)
        later = run.checkpoint("test 2")
        at_later = run.state()
        run.write("k009", "written by test 2")
        run.rollback(later, "rollback(later), a checkpoint taken after a release")
        run.expect(at_later, "a checkpoint taken after release(inner) is not restored exactly")
        # the plugin's order when a test's own checkpoint is rolled past: release the newer, restore the older
        run.write("k010", "written after rollback(later)")
        written = run.state()
        run.release(later, "release(later) before rollback(outer)")
        run.expect(written, "release(token) undid writes: it must keep them (a test marked rollback('other') keeps "
                   "its writes to this store, whose token is released without a rollback)", then="before")
        run.rollback(outer, "rollback(outer) after releasing the newer checkpoints")
        run.expect(at_outer, "after releasing the newer checkpoints, rollback(outer) differs from the outer checkpoint")
        run.change("after", start=6)
        run.rollback(outer, "a second rollback(outer) after the releases")
        run.expect(at_outer, "a second rollback(outer) after the releases differs from the outer checkpoint")
        run.release(outer, "release(outer)")
        run.expect(at_outer, "release(outer) changed the store", then="before")

    def test_many_writes(self, adapter: Any, store: StoreDriver) -> None:
        """Many writes (``many_writes``: adds, overwrites, deletes, re-adds of the same keys) are all undone."""
        run = _Scenario("many writes", adapter, store)
        run.seed()
        seeded = run.seeded()
        token = run.checkpoint("test many writes")
        at_checkpoint = run.state()
        rng = random.Random(2024)
        pool = max(self.many_writes // 3, 1)
        for i in range(self.many_writes):
            roll = rng.random()
            if roll < 0.25 and run.live:
                run.delete(rng.choice(sorted(run.live)))
            else:
                key = rng.choice(seeded) if roll < 0.5 else f"m{rng.randrange(pool):04d}"
                run.write(key, f"write {i}")
        run.rollback(token, f"rollback(token) after {self.many_writes} writes")
        run.expect(at_checkpoint, f"after {self.many_writes} writes, rollback(token) differs from the checkpoint")

    def test_no_trace(self, adapter: Any, store: StoreDriver) -> None:
        """The adapter's bookkeeping never shows in the store: not after a checkpoint, a rollback or a release."""
        run = _Scenario("no trace", adapter, store)
        run.seed()
        before = run.state()
        outer = run.checkpoint("session")
        run.expect(before, "checkpoint() left something in the store", then="before")
        inner = run.checkpoint("test")
        run.expect(before, "a nested checkpoint() left something in the store", then="before")
        run.change("test")
        run.rollback(inner)
        run.expect(before, "rollback(token) left something in the store", then="before")
        if run.has("observe"):
            run.observe()
            run.expect(before, "observe() changed the store", then="before")
        if run.has("changes"):
            run.changes(outer, "changes(token)")
            run.expect(before, "changes(token) changed the store", then="before")
        if run.has("release"):
            run.release(inner, "release(inner)")
            run.expect(before, "release(token) changed the store", then="before")
        run.rollback(outer)
        run.expect(before, "rollback(token) to the first checkpoint left something in the store", then="before")

    # -- reads that rewrite what they read; objects beside the data (Redis, issue 12) ------------
    # Optional driver capabilities; a test is skipped, saying which method it needs, for a driver
    # without them:
    #   ``write_rewritable(key)``: a value that a later read rewrites in place (a Redis HyperLogLog,
    #   whose cached count PFCOUNT writes into its bytes), and ``read_rewriting(key)``, that read;
    #   ``write_object(name, value)`` / ``delete_object(name)``: an object the store keeps beside
    #   its data, which ``read_all()`` shows (a Redis ACL user or function library).

    def test_a_read_that_rewrites_a_value_is_undone(self, adapter: Any, store: StoreDriver) -> None:
        """A read that rewrites the stored form of a value (without a change event) is rolled back too."""
        run = _Scenario("a read that rewrites", adapter, store)
        _skip_unless_driver(store, "write_rewritable", "read_rewriting")
        run.seed()
        _call(run.guarantee, "store.write_rewritable('r001')", store.write_rewritable, "r001")  # type: ignore[attr-defined]
        _call(run.guarantee, "store.write_rewritable('r002')", store.write_rewritable, "r002")  # type: ignore[attr-defined]
        outer = run.checkpoint("class fixture")
        at_outer = run.state()
        _call(run.guarantee, "store.read_rewriting('r001')", store.read_rewriting, "r001")  # type: ignore[attr-defined]
        inner = run.checkpoint("test")
        at_inner = run.state()
        _call(run.guarantee, "store.read_rewriting('r002')", store.read_rewriting, "r002")  # type: ignore[attr-defined]
        run.rollback(inner, "rollback(inner) after a read that rewrote a value")
        run.expect(at_inner, "after a read that rewrote a value, rollback(inner) differs from its checkpoint")
        run.rollback(outer, "rollback(outer) after reads that rewrote values")
        run.expect(at_outer, "after reads that rewrote values, rollback(outer) differs from its checkpoint")

    def test_objects_beside_the_data_are_put_back(self, adapter: Any, store: StoreDriver) -> None:
        """Objects the store keeps beside its data, added, changed or deleted, are as they were after a rollback."""
        run = _Scenario("objects beside the data", adapter, store)
        _skip_unless_driver(store, "write_object", "delete_object")

        def write(name: str, value: str) -> None:
            _call(run.guarantee, f"store.write_object({name!r}, {value!r})", store.write_object, name, value)  # type: ignore[attr-defined]

        def delete(name: str) -> None:
            _call(run.guarantee, f"store.delete_object({name!r})", store.delete_object, name)  # type: ignore[attr-defined]

        run.seed()
        write("o1", "first")
        write("o2", "second")
        outer = run.checkpoint("session")
        at_outer = run.state()
        write("o3", "added")
        write("o1", "changed")
        delete("o2")
        inner = run.checkpoint("test")
        at_inner = run.state()
        delete("o1")
        write("o3", "changed again")
        run.change("test")
        run.rollback(inner, "rollback(inner) after objects were added, changed and deleted")
        run.expect(at_inner, "rollback(inner) did not put the objects back")
        run.rollback(outer, "rollback(outer) after objects were added, changed and deleted")
        run.expect(at_outer, "rollback(outer) did not put the objects back")
        write("o2", "after the rollback")
        run.rollback(outer, "a second rollback(outer)")
        run.expect(at_outer, "a second rollback(outer) did not put the objects back")

    # -- end of the block ------------------------------------------------------------------------------

    def test_observe(self, adapter: Any, store: StoreDriver) -> None:
        """``observe()`` is equal before and after an exact restore, and differs after a write."""
        run = _Scenario("observe", adapter, store)
        _skip_without(run, "observe")
        seeded = run.seed()
        first = run.observe("observe() at the checkpoint")
        if first.store != adapter.name:
            _fail("observe", f"observe() names the store {first.store!r}, but the adapter is named {adapter.name!r}")
        token = run.checkpoint("test observe")
        again = run.observe("observe() right after checkpoint()")
        if again.state != first.state:
            _fail("observe", "two observations of an unchanged store differ:", first.diff(again))
        for key, value in (("new-observed", "x"), ("k000", "changed"), ("k001", None)):
            before = run.observe()
            if value is None:
                run.delete(key)
            else:
                run.write(key, value)
            after = run.observe()
            if after.state == before.state:
                what = f"store.delete({key!r})" if value is None else f"store.write({key!r}, {value!r})"
                _fail("observe", f"the observation did not change after {what}: verify could not see a bad restore")
        run.rollback(token)
        run.expect(seeded, "after rollback(token) the store differs from the checkpoint")
        restored = run.observe("observe() after rollback(token)")
        if restored.state != first.state:
            _fail("observe", "after an exact restore the observation differs from the one at the checkpoint:",
                  first.diff(restored, limit=_SHOWN_DIFFERENCES))

    def test_changes(self, adapter: Any, store: StoreDriver) -> None:
        """``changes(token)`` names every key added, modified and removed since the token, and no other key."""
        run = _Scenario("changes", adapter, store)
        _skip_without(run, "changes")
        run.seed()
        outer = run.checkpoint("module fixture")
        nothing = run.changes(outer, "changes(token) right after checkpoint()")
        if nothing:
            _fail("changes", f"nothing was written since the checkpoint, but changes(token) reports {_fmt(nothing)}")
        run.write("added1", "a")
        run.write("k000", "modified 1")
        run.delete("k001")
        inner = run.checkpoint("test")
        run.write("added2", "b")
        run.write("k002", "modified 2")
        run.delete("k003")
        untouched = [f"k{i:03d}" for i in range(4, _SEED_KEYS)]
        _expect_changes(
            run, run.changes(inner, "changes(inner)"), "changes(inner)",
            {"added": ["added2"], "modified": ["k002"], "removed": ["k003"]},
            untouched + ["added1", "k000", "k001"],
        )
        _expect_changes(
            run, run.changes(outer, "changes(outer)"), "changes(outer), with writes before and after a newer one",
            {"added": ["added1", "added2"], "modified": ["k000", "k002"], "removed": ["k001", "k003"]},
            untouched,
        )
        run.rollback(outer)
        after = run.changes(outer, "changes(token) after rollback(token)")
        if after:
            _fail("changes", f"after rollback(token) nothing differs from the checkpoint, but changes(token) "
                  f"reports {_fmt(after)}")

    def test_close(self, adapter: Any, store: StoreDriver) -> None:
        """``close()`` (the plugin calls it once, after the session's last restore) leaves the data as it is."""
        run = _Scenario("close", adapter, store)
        _skip_without(run, "close")
        run.seed()
        before = run.state()
        token = run.checkpoint("adapter start")
        run.change("session")
        run.rollback(token)
        run.expect(before, "after rollback(token), before close(), the store differs from the checkpoint")
        _call("close", "close()", adapter.close)
        run.expect(before, "close() changed the store (or left the adapter's bookkeeping in it)", then="before")

    def test_plugin_call_sequence(self, adapter: Any, store: StoreDriver) -> None:
        """A session as the plugin runs it: a root checkpoint, a seeded session fixture, tests, the final restore."""
        run = _Scenario("plugin call sequence", adapter, store)
        can_release = run.has("release")
        at_start = run.state()
        root = run.checkpoint(f"{adapter.name} start")
        session = run.checkpoint("session fixture catalogue")
        seeded = run.seed()
        for n in range(1, 4):
            test = run.checkpoint(f"test tests/test_a.py::test_{n}")
            run.change(f"test{n}", start=n)
            mine = run.checkpoint("checkpoint") if n == 2 else None
            run.write("k000", f"after rollback.checkpoint() in test {n}")
            if mine is not None and can_release:
                run.release(mine, "release(the test's own checkpoint), before rollback(the test's)")
            run.rollback(test, f"rollback(test {n})")
            run.expect(seeded, f"after test {n}, rollback(its checkpoint) differs from what the session fixture seeded")
            if can_release:
                run.release(test, f"release(test {n})")
        run.rollback(session, "rollback(session fixture checkpoint)")
        run.expect(at_start, "after the session fixture's teardown the store differs from its state at the start")
        if can_release:
            run.release(session, "release(session fixture checkpoint)")
        run.rollback(root, "rollback(root), at the end of the session")
        run.expect(at_start, "at the end of the session the store differs from its state when the adapter started")


def _fmt(changes: Changes) -> str:
    parts = [
        f"{kind}={sorted(getattr(changes, kind), key=repr)!r}"
        for kind in ("added", "modified", "removed")
        if getattr(changes, kind)
    ]
    if not changes.complete:
        parts.append("complete=False")
    return ", ".join(parts)


def _expect_changes(
    run: _Scenario, changes: Changes, call: str, expected: Mapping[str, list[str]], unchanged: list[str]
) -> None:
    """Each key of ``expected`` in its set (and no other), no key of ``unchanged`` in any set."""
    __tracebackhide__ = True
    problems = []
    kinds = ("added", "modified", "removed")
    for kind in kinds:
        for key in expected.get(kind, []):
            name = run.change_name(key)
            found = [k for k in kinds if name in getattr(changes, k)]
            if found != [kind]:
                where = " and ".join(found) if found else "no set"
                problems.append(f"key {key!r} (named {name!r}) was {kind}, but changes lists it in {where}")
    for key in unchanged:
        name = run.change_name(key)
        found = [k for k in kinds if name in getattr(changes, k)]
        if found:
            problems.append(f"key {key!r} (named {name!r}) did not change since the token, but is listed as "
                            + " and ".join(found))
    if problems:
        _fail("changes", f"{call} does not match the writes ({_fmt(changes) or 'nothing reported'}):", problems)
