"""Product search in Elasticsearch: the search-backed part of the example shop.

One ``products`` index (reached through the ``catalogue`` alias) that the shop
keeps in step with its Redis catalogue: full-text search on names, a keyword
``category`` for filters, and discontinuing products by query.
"""

from __future__ import annotations

from typing import Any

INDEX = "products"
ALIAS = "catalogue"
MAPPINGS = {
    "properties": {
        "sku": {"type": "keyword"},
        "name": {"type": "text"},
        "category": {"type": "keyword"},
        "price": {"type": "integer"},
    }
}


class Search:
    """Search over the catalogue, through the ``catalogue`` alias."""

    def __init__(self, es: Any) -> None:
        self.es = es

    def create_index(self) -> None:
        self.es.indices.create(index=INDEX, mappings=MAPPINGS, aliases={ALIAS: {}}, settings={"number_of_replicas": 0})

    def add(self, sku: str, name: str, category: str, price: int, refresh: bool = False) -> None:
        doc = {"sku": sku, "name": name, "category": category, "price": price}
        self.es.index(index=ALIAS, id=sku, document=doc, refresh=refresh)

    def find(self, words: str, category: str | None = None, size: int = 10) -> list[str]:
        """SKUs whose name matches ``words`` (best first), optionally in one category."""
        query: dict[str, Any] = {"bool": {"must": [{"match": {"name": words}}]}}
        if category is not None:
            query["bool"]["filter"] = [{"term": {"category": category}}]
        hits = self.es.search(index=ALIAS, query=query, size=size)["hits"]["hits"]
        return [hit["_id"] for hit in hits]

    def in_category(self, category: str) -> int:
        return int(self.es.count(index=ALIAS, query={"term": {"category": category}})["count"])

    def discontinue(self, category: str) -> int:
        """Take a whole category out of search; returns how many products went."""
        done = self.es.delete_by_query(index=ALIAS, query={"term": {"category": category}}, refresh=True)
        return int(done["deleted"])

    def reindex_with_brand(self) -> None:
        """A migration: a new ``brand`` field in the mapping."""
        self.es.indices.put_mapping(index=INDEX, properties={"brand": {"type": "keyword"}})
