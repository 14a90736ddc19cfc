"""A store of your own: conftest.py registers the in-process FEATURES dict with a DictAdapter."""

from __future__ import annotations

from shop import FEATURES


def test_express_checkout(shop):
    FEATURES["express_checkout"] = True
    shop.add_to_cart("erin", "sku-9")
    order = shop.checkout("erin")
    assert shop.order(order)["shipping"] == "express"


def test_flags_are_back_to_their_defaults(shop):
    assert FEATURES == {"express_checkout": False}
