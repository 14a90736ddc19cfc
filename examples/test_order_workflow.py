"""Exploring an order workflow (``orders.py``) across Redis and MongoDB, two ways.

The invariant: money adds up. Whatever happened, each order's payments (charges
minus refunds, in MongoDB) come to its total while it is paid and to nothing
otherwise, and the wallet (in Redis) plus what is paid is what the customer
started with. The app has a bug that only a paid order's cancellation reaches.

* ``rollback.explore`` tries every sequence of up to four actions, breadth first,
  from the seeded state, and reports the shortest one that breaks the invariant.
* A Hypothesis ``RuleBasedStateMachine`` over the same actions finds it too; the
  plugin starts each of its runs from the same seeded state.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from orders import WALLET, Orders

from pytest_rollback import Action, InvariantViolated

USER = "ann"
SKU = "sku-1"


@pytest.fixture
def orders(redis_client, mongo_db) -> Orders:
    """The workflow, with Ann's wallet filled (the shop's catalogue is seeded for the session)."""
    redis_client.set(f"wallet:{USER}", WALLET)
    return Orders(redis_client, mongo_db)


def money_adds_up(app: Orders) -> None:
    """Each order's payments match its state, and no money appeared or vanished."""
    paid = 0
    for order in app.db.orders.find({"user": USER}):
        paid_in = app.paid_in(order["_id"])
        owed = order["total"] if order["state"] == "paid" else 0
        assert paid_in == owed, f"{order['_id']} is {order['state']}, yet {paid_in} is still charged for it"
        paid += paid_in
    assert app.wallet(USER) + paid == WALLET, "money appeared or vanished"


def state(app: Orders) -> str | None:
    order = app.open_order(USER)
    return None if order is None else order["state"]


def test_exploration_finds_the_shortest_sequence_that_loses_money(rollback, orders):
    def create_cart():
        orders.create_cart(USER)

    def add_item():
        orders.add_item(USER, SKU)

    def pay():
        orders.pay(USER)

    def refund():
        orders.refund(USER)

    def cancel():
        orders.cancel(USER)

    def money_adds_up_for_ann():
        money_adds_up(orders)

    actions = [  # each where the app's UI would offer it
        Action(create_cart, when=lambda: state(orders) is None),
        Action(add_item, when=lambda: state(orders) == "cart"),
        Action(pay, when=lambda: state(orders) == "cart" and orders.open_order(USER)["items"]),
        Action(refund, when=lambda: state(orders) == "paid"),
        Action(cancel, when=lambda: state(orders) is not None),
    ]
    with pytest.raises(InvariantViolated) as found:
        rollback.explore(actions, [money_adds_up_for_ann], max_depth=4)
    print(found.value)  # shown with -s: the report, as a failing test would show it
    assert found.value.sequence == ("create_cart", "add_item", "pay", "cancel")
    assert "is cancelled, yet 101 is still charged for it" in found.value.error
    assert orders.open_order(USER) is None and orders.wallet(USER) == WALLET  # back at the seeded state


class OrderMachine(RuleBasedStateMachine):
    """The same actions as rules, with the state of Ann's open order kept as a model (no reads to decide).

    ``app`` is set by the test that runs the machine.
    """

    app: Orders

    def __init__(self):
        super().__init__()
        self.open: str | None = None  # None, "cart" or "paid"
        self.items = 0

    @precondition(lambda self: self.open is None)
    @rule()
    def create_cart(self):
        self.app.create_cart(USER)
        self.open, self.items = "cart", 0

    @precondition(lambda self: self.open == "cart")
    @rule()
    def add_item(self):
        self.app.add_item(USER, SKU)
        self.items += 1

    @precondition(lambda self: self.open == "cart" and self.items)
    @rule()
    def pay(self):
        self.app.pay(USER)
        self.open = "paid"

    @precondition(lambda self: self.open == "paid")
    @rule()
    def refund(self):
        self.app.refund(USER)
        self.open = None

    @precondition(lambda self: self.open is not None)
    @rule()
    def cancel(self):
        self.app.cancel(USER)
        self.open = None

    @invariant()
    def money_adds_up(self):
        money_adds_up(self.app)


def test_a_hypothesis_state_machine_finds_it_too(orders, redis_client):
    OrderMachine.app = orders
    runs = settings(
        max_examples=100, stateful_step_count=6, database=None, derandomize=True, deadline=None,
        phases=[Phase.generate, Phase.shrink],  # no explain phase: its extra runs say nothing new here
    )
    with pytest.raises(AssertionError, match="is cancelled, yet 101 is still charged") as found:
        run_state_machine_as_test(OrderMachine, settings=runs)
    steps = "\n".join(getattr(found.value, "__notes__", []))
    print(steps)  # shown with -s: the minimal program Hypothesis shrank the failure to
    for step in ("state.create_cart()", "state.add_item()", "state.pay()", "state.cancel()"):
        assert step in steps
    assert redis_client.get(f"wallet:{USER}") == str(WALLET).encode()  # each run started from here, and so do we
