"""Seed a catalogue once for the whole session; every test starts from it."""

from __future__ import annotations

import os

import pytest
from shop import Shop

PRODUCTS = 2_000


@pytest.fixture(scope="session", autouse=True)
def catalogue(redis_service, redis_client):
    """2,000 products, written once. Tests change them freely: each test's writes are rolled back."""
    # The application finds Redis the way it does in production: from the environment.
    os.environ["SHOP_REDIS_URL"] = redis_service.url
    shop = Shop(redis_client)
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(PRODUCTS):
            pipe.hset(f"product:sku-{i}", mapping={"name": f"Product {i}", "price": 100 + i})
            pipe.set(f"stock:sku-{i}", 10)
            pipe.sadd("catalogue", f"sku-{i}")
        pipe.execute()
    return shop


@pytest.fixture
def shop(redis_client):
    return Shop(redis_client)
