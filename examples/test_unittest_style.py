"""A unittest.TestCase that knows nothing of pytest fixtures, rolled back all the same."""

from __future__ import annotations

import os
import unittest

import redis
from shop import Shop


class TestInventory(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The application's own configuration (conftest.py points it at the session's server).
        cls.shop = Shop.from_url(os.environ["SHOP_REDIS_URL"])
        cls.shop.add_product("limited", "Limited edition", 9_900, stock=3)  # for this class only

    @classmethod
    def tearDownClass(cls):
        cls.shop.close()

    def setUp(self):
        self.shop.add_to_cart("dora", "limited", 2)

    def test_checkout(self):
        self.shop.checkout("dora")
        self.assertEqual(self.shop.stock("limited"), 1)

    def test_stock_untouched_by_the_other_test(self):
        self.assertEqual(self.shop.stock("limited"), 3)
        self.assertEqual(self.shop.cart("dora"), {"limited": 2})  # only this test's setUp


def test_limited_edition_is_gone_after_the_class():
    r = redis.Redis.from_url(os.environ["SHOP_REDIS_URL"])
    try:
        assert not r.exists("product:limited", "cart:dora")
        assert not r.sismember("catalogue", "limited")
    finally:
        r.close()
