"""The Mongo-backed reviews: seeded once per session, rolled back after every test.

The session fixture ``seeded_reviews`` (conftest.py) writes 1,000 reviews and the
indexes once; each test below starts from exactly that, whatever the previous
test inserted, deleted, dropped or indexed.
"""

from __future__ import annotations

import pytest
from reviews import AlreadyReviewed

SEEDED = 1_000


def test_add_a_review(reviews):
    reviews.add("dora", "sku-1", 5, "great")
    assert reviews.count("sku-1") == SEEDED // 100 + 1


def test_the_previous_review_is_gone(reviews):
    assert reviews.count() == SEEDED
    assert reviews.count("sku-1") == SEEDED // 100


def test_one_review_per_user_and_product(reviews):
    with pytest.raises(AlreadyReviewed):
        reviews.add("user-1", "sku-1", 1)  # seeded already: the unique index says no


def test_moderation_removes_a_product_s_reviews(reviews):
    assert reviews.remove_all("sku-2") == SEEDED // 100
    assert reviews.average("sku-2") is None


def test_dropping_and_reindexing_is_undone_too(mongo_db, reviews):
    mongo_db.reviews.drop_index("one_per_user")
    mongo_db.ratings.drop()
    reviews.add("user-1", "sku-1", 1)  # no unique index now


def test_indexes_and_ratings_are_back(mongo_db, reviews):
    assert "one_per_user" in mongo_db.reviews.index_information()
    assert reviews.average("sku-3") == 3.0
    assert reviews.count() == SEEDED


@pytest.fixture(scope="module")
def launch_reviews(reviews):
    """Reviews of a product launched for this module only."""
    for i in range(3):
        reviews.add(f"launch-{i}", "sku-new", 4)


def test_module_data_is_there(reviews, launch_reviews):
    assert reviews.count("sku-new") == 3


def test_what_this_test_changed(mongo_db, reviews, rollback):
    reviews.add("erin", "sku-5", 2)
    mongo_db.reviews.delete_one({"user": "user-5", "sku": "sku-5"})
    changed = rollback.changes()["mongo"]
    db = mongo_db.name
    assert f"{db}.ratings:'sku-5'" in changed.modified  # the summary document
    assert len([k for k in changed.added if k.startswith(f"{db}.reviews:")]) == 1
    assert len([k for k in changed.removed if k.startswith(f"{db}.reviews:")]) == 1
