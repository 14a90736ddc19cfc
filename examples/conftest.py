"""The example suite's fixtures: a Redis catalogue and Mongo reviews seeded once, and the shop under test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shop import FEATURES, Shop

from pytest_rollback.adapters.memory import DictAdapter

PRODUCTS = 2_000


def pytest_rollback_register(registry):
    """The in-process feature flags are rolled back like Redis: each test starts with the defaults."""
    registry.add_adapter(DictAdapter("features", FEATURES))


@pytest.fixture(scope="session", autouse=True)
def catalogue(redis_service, redis_client) -> Iterator[int]:
    """2,000 products, written once for the whole session; yields their number.

    Tests change them freely: each test's writes are rolled back, so every test
    starts from this catalogue.
    """
    with pytest.MonkeyPatch.context() as env:
        # Code that configures itself from the environment finds the session's server.
        env.setenv("SHOP_REDIS_URL", redis_service.url)
        with redis_client.pipeline(transaction=False) as pipe:
            for i in range(PRODUCTS):
                pipe.hset(f"product:sku-{i}", mapping={"name": f"Product {i}", "price": 100 + i, "stock": 10})
                pipe.sadd("catalogue", f"sku-{i}")
            pipe.execute()
        yield PRODUCTS


@pytest.fixture
def shop(redis_client) -> Shop:
    return Shop(redis_client)


@pytest.fixture(scope="session")
def reviews(mongo_db):
    """The Mongo-backed reviews (``reviews.py``), seeded once: 1,000 reviews over 100 products.

    Every product ``sku-<n>`` for n < 100 has ten reviews, averaging 3 stars.
    """
    from reviews import Reviews

    store = Reviews(mongo_db)
    store.create_indexes()
    mongo_db.reviews.insert_many(
        [
            {"user": f"user-{u}", "sku": f"sku-{p}", "stars": 1 + (u + p) % 5, "text": ""}
            for p in range(100)
            for u in range(10)
        ]
    )
    mongo_db.ratings.insert_many([{"_id": f"sku-{p}", "count": 10, "total": 30} for p in range(100)])
    return store


CATEGORIES = ("garden", "kitchen", "toys", "books")


@pytest.fixture(scope="session")
def search(es_client):
    """The Elasticsearch-backed product search (``search.py``), indexed once: 2,000 products.

    Product ``sku-<n>`` is in category ``CATEGORIES[n % 4]`` (500 per category);
    every name contains "Product", and names of products 0-9 also say "lamp".
    """
    from elasticsearch import helpers
    from search import INDEX, Search

    store = Search(es_client)
    store.create_index()
    docs = (
        {
            "_index": INDEX,
            "_id": f"sku-{i}",
            "_source": {
                "sku": f"sku-{i}",
                "name": f"Product {i}" + (" lamp" if i < 10 else ""),
                "category": CATEGORIES[i % 4],
                "price": 100 + i,
            },
        }
        for i in range(PRODUCTS)
    )
    helpers.bulk(es_client, docs, refresh=True)
    return store
