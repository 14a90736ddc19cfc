"""Product reviews kept in MongoDB: the Mongo-backed part of the example shop.

One document per review in ``reviews`` (a unique index on user and SKU: one
review per user and product), and a ``ratings`` summary per SKU kept up to date
as reviews come and go.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError


class AlreadyReviewed(Exception):
    """A user reviews the same product twice."""


class Reviews:
    """Reviews and rating summaries in one database."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def create_indexes(self) -> None:
        self.db.reviews.create_index([("user", ASCENDING), ("sku", ASCENDING)], unique=True, name="one_per_user")
        self.db.reviews.create_index("sku")

    def add(self, user: str, sku: str, stars: int, text: str = "") -> None:
        try:
            self.db.reviews.insert_one({"user": user, "sku": sku, "stars": stars, "text": text})
        except DuplicateKeyError:
            raise AlreadyReviewed(f"{user} has reviewed {sku} already") from None
        self.db.ratings.update_one({"_id": sku}, {"$inc": {"count": 1, "total": stars}}, upsert=True)

    def remove_all(self, sku: str) -> int:
        """Moderation: take every review of a product down."""
        removed = self.db.reviews.delete_many({"sku": sku}).deleted_count
        self.db.ratings.delete_one({"_id": sku})
        return int(removed)

    def average(self, sku: str) -> float | None:
        summary = self.db.ratings.find_one({"_id": sku})
        return summary["total"] / summary["count"] if summary else None

    def count(self, sku: str | None = None) -> int:
        return int(self.db.reviews.count_documents({} if sku is None else {"sku": sku}))
