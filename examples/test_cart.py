"""Tests write freely; the next test starts from the seeded catalogue again."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def vip(redis_client):
    """A VIP customer with a saved cart: there for every test of this module, gone after it."""
    redis_client.hset("user:vip", mapping={"tier": "gold"})
    redis_client.hset("cart:vip", "sku-1", 2)


def test_add_to_cart(shop, vip):
    shop.add_to_cart("vip", "sku-7", 3)
    assert shop.cart("vip") == {"sku-1": 2, "sku-7": 3}


def test_cart_is_as_the_module_left_it(shop, vip):
    # test_add_to_cart's sku-7 is gone; the module's saved cart is still there.
    assert shop.cart("vip") == {"sku-1": 2}


def test_checkout_takes_stock(shop, vip):
    order = shop.checkout("vip")
    assert shop.stock("sku-1") == 8
    assert shop.orders("vip") == [order]
    assert shop.cart("vip") == {}


def test_stock_and_orders_are_back(shop, vip, redis_client, catalogue):
    assert shop.stock("sku-1") == 10
    assert shop.orders("vip") == []
    assert not redis_client.exists("order:seq")
    assert redis_client.scard("catalogue") == catalogue


def test_even_a_flushall_is_undone(redis_client):
    redis_client.flushall()
    assert redis_client.dbsize() == 0


def test_catalogue_survived_the_flushall(shop, vip):
    assert shop.price("sku-1999") == 2099
    assert shop.cart("vip") == {"sku-1": 2}
