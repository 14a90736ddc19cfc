"""Branching tests: an order is placed once, and every way it can go on starts from it.

``test_place_order`` runs once; ``test_pay`` and ``test_cancel_unpaid`` start from
the state it left, the three cases of ``test_after_payment`` from the state
``test_pay`` left. No test re-places the order, and none sees another branch's
writes. The plugin runs parents first, whatever the order they are written in.
"""

from __future__ import annotations

import pytest


@pytest.mark.branch_from("test_pay")
@pytest.mark.parametrize("action", ["ship", "cancel", "pay again"])
def test_after_payment(shop, action):
    (order,) = shop.orders("dana")
    assert shop.order(order)["status"] == "paid"  # no sibling's action is visible
    if action == "ship":
        shop.ship(order)
        assert shop.order(order)["status"] == "shipped"
    elif action == "cancel":
        shop.cancel(order)
        assert shop.stock("sku-7") == 10
    else:
        with pytest.raises(ValueError, match="is paid, not placed"):
            shop.pay(order)


def test_place_order(shop):
    shop.add_to_cart("dana", "sku-7", 2)
    shop.checkout("dana")
    assert shop.stock("sku-7") == 8


@pytest.mark.branch_from("test_place_order")
def test_pay(shop):
    (order,) = shop.orders("dana")
    shop.pay(order)
    assert shop.order(order)["status"] == "paid"


@pytest.mark.branch_from("test_place_order")
def test_cancel_unpaid(shop):
    (order,) = shop.orders("dana")
    assert shop.order(order)["status"] == "placed"  # a sibling of test_pay: never paid
    shop.cancel(order)
    assert shop.stock("sku-7") == 10


def test_no_order_outside_the_tree(shop):
    assert shop.orders("dana") == []
    assert shop.stock("sku-7") == 10


def test_each_shipping_step_as_a_subtest(shop, rollback):
    """Branches inside one test; each is reported as a subtest of its own (``-v`` shows them)."""
    shop.add_to_cart("erin", "sku-8")
    order = shop.checkout("erin")
    for step in ("pay", "cancel"):
        with rollback.branch(step, subtest=True):
            assert shop.order(order)["status"] == "placed"
            getattr(shop, step)(order)
