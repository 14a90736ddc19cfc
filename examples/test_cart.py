"""Tests write freely; the next test starts from the seeded catalogue again."""

from __future__ import annotations

import pytest
from conftest import PRODUCTS


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


def test_checkout_decrements_stock(shop, vip):
    order = shop.checkout("vip")
    assert shop.stock("sku-1") == 8
    assert shop.orders("vip") == [order]


def test_stock_is_back(shop, vip, redis_client):
    assert shop.stock("sku-1") == 10
    assert shop.orders("vip") == []
    assert redis_client.scard("catalogue") == PRODUCTS


def test_unknown_product(shop):
    with pytest.raises(KeyError):
        shop.add_to_cart("ann", "no-such-sku")


def test_even_a_flushall_is_undone(redis_client):
    redis_client.flushall()
    assert redis_client.dbsize() == 0


def test_catalogue_survived_the_flushall(shop):
    assert shop.price("sku-1999") == 2099


def test_sessions_keep_their_ttl(shop, redis_client):
    token = shop.login("ann", ttl_seconds=60)
    assert 0 < redis_client.ttl(token) <= 60


def test_no_session_left(redis_client):
    assert not redis_client.exists("session:ann")
