"""Controlling rollback from a test: checkpoints, branches, changes, the marker, and asyncio."""

from __future__ import annotations

import asyncio

import pytest


def test_checkpoint_and_restore(shop, rollback):
    shop.add_to_cart("bob", "sku-1")
    cart_filled = rollback.checkpoint("cart filled")
    shop.checkout("bob")
    assert shop.stock("sku-1") == 9
    rollback.restore(cart_filled)
    assert shop.stock("sku-1") == 10
    assert shop.cart("bob") == {"sku-1": 1}


@pytest.mark.parametrize("qty", [1, 10])
def test_branches_from_one_cart(shop, rollback, qty):
    shop.add_to_cart("bob", "sku-2", qty)
    with rollback.branch():
        shop.checkout("bob")
        assert shop.stock("sku-2") == 10 - qty
    # The branch's checkout is undone; the cart filled before it is still there.
    assert shop.stock("sku-2") == 10
    assert shop.cart("bob") == {"sku-2": qty}


def test_what_changed(shop, rollback):
    shop.add_to_cart("carol", "sku-3")
    shop.r.delete("product:sku-4")
    changes = rollback.changes()["redis"]
    assert changes.added == {"0:cart:carol"}
    assert changes.removed == {"0:product:sku-4"}


@pytest.mark.rollback(enabled=False)
def test_keeps_its_writes(redis_client):
    redis_client.set("banner", "Spring sale")


def test_sees_the_kept_write(redis_client):
    # Kept for the rest of this module; rolled back when the module ends.
    assert redis_client.get("banner") == b"Spring sale"


def test_async_client(async_redis_client):
    # No pytest-asyncio needed: the test drives its own event loop.
    async def scenario():
        await async_redis_client.set("async:key", "v")
        return await async_redis_client.get("async:key")

    assert asyncio.run(scenario()) == b"v"


def test_async_write_is_gone(redis_client):
    assert not redis_client.exists("async:key")
