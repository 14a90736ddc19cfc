"""Another module: the VIP of test_cart.py never reaches it."""

from __future__ import annotations

import pytest
import redis
from conftest import PRODUCTS


def test_no_vip_here(redis_client):
    assert not redis_client.exists("user:vip")
    assert not redis_client.exists("cart:vip")


def test_code_with_its_own_connection(redis_service, redis_client):
    # Code under test may open its own connection from the URL: still rolled back.
    own = redis.Redis.from_url(redis_service.url)
    own.set("written-elsewhere", 1)
    own.close()


def test_its_write_is_gone(redis_client):
    assert not redis_client.exists("written-elsewhere")
    assert redis_client.scard("catalogue") == PRODUCTS


@pytest.fixture(scope="class")
def promotion(redis_client):
    redis_client.set("promo:black-friday", "30%")


@pytest.mark.usefixtures("promotion")
class TestPromotions:
    """A class-scoped fixture: the promotion exists for the class only."""

    def test_promotion_active(self, redis_client):
        assert redis_client.get("promo:black-friday") == b"30%"
        redis_client.set("promo:black-friday", "50%")

    def test_promotion_reset(self, redis_client):
        assert redis_client.get("promo:black-friday") == b"30%"


def test_promotion_gone_after_class(redis_client):
    assert not redis_client.exists("promo:black-friday")


