"""Another module: the VIP of test_cart.py never reaches it; a class has data of its own."""

from __future__ import annotations

import pytest
from shop import record_view


def test_no_vip_here(redis_client):
    assert not redis_client.exists("user:vip", "cart:vip")


def test_code_with_its_own_connection(redis_service):
    # The code under test opens its own connection from the URL: still rolled back.
    assert record_view(redis_service.url, "sku-5") == 1
    assert record_view(redis_service.url, "sku-5") == 2


def test_its_write_is_gone(redis_client, catalogue):
    assert not redis_client.exists("views:sku-5")
    assert redis_client.scard("catalogue") == catalogue


@pytest.fixture(scope="class")
def promotion(redis_client):
    redis_client.set("promo:black-friday", "30%")


@pytest.mark.usefixtures("promotion")
class TestPromotions:
    """A class-scoped fixture: the promotion exists for the tests of this class only."""

    def test_promotion_active(self, redis_client):
        assert redis_client.get("promo:black-friday") == b"30%"
        redis_client.set("promo:black-friday", "50%")

    def test_promotion_as_the_class_set_it(self, redis_client):
        assert redis_client.get("promo:black-friday") == b"30%"


def test_promotion_gone_after_the_class(redis_client):
    assert not redis_client.exists("promo:black-friday")
