"""Controlling rollback from a test: checkpoints, branches, changes, and the marker."""

from __future__ import annotations

import asyncio

import pytest


def test_checkpoint_and_restore(shop, rollback):
    shop.add_to_cart("bob", "sku-1")
    before_checkout = rollback.checkpoint("cart filled")
    shop.checkout("bob")
    assert shop.stock("sku-1") == 9
    rollback.restore(before_checkout)
    assert shop.stock("sku-1") == 10
    assert shop.cart("bob") == {"sku-1": 1}


@pytest.mark.parametrize("qty", [1, 5, 10])
def test_branches_from_one_cart(shop, rollback, qty):
    shop.add_to_cart("bob", "sku-2", qty)
    with rollback.branch():
        shop.checkout("bob")
        assert shop.stock("sku-2") == 10 - qty
    assert shop.stock("sku-2") == 10  # the branch's checkout is undone
    assert shop.cart("bob") == {"sku-2": qty}


def test_what_changed(shop, rollback):
    shop.add_to_cart("carol", "sku-3")
    shop.r.delete("stock:sku-4")
    changes = rollback.changes()["redis"]
    assert "0:cart:carol" in changes.added
    assert "0:stock:sku-4" in changes.removed


@pytest.mark.rollback(enabled=False)
def test_keeps_its_writes(redis_client):
    redis_client.set("feature:new-checkout", "on")


def test_sees_the_kept_write(redis_client):
    assert redis_client.get("feature:new-checkout") == b"on"


def test_async_client(async_redis_client):
    async def scenario():
        await async_redis_client.set("async:key", "v")
        return await async_redis_client.get("async:key")

    assert asyncio.run(scenario()) == b"v"


def test_async_write_is_gone(redis_client):
    assert not redis_client.exists("async:key")
