"""Search tests: each one starts from the 2,000 indexed products, whatever the previous one did.

Deleting a category, adding products without a refresh, changing the mapping or
the alias: all of it is gone before the next test, at the cost of restoring the
one index that was written, not of indexing 2,000 products again.
"""

from __future__ import annotations

from conftest import PRODUCTS


def test_find_by_words(search):
    assert set(search.find("lamp")) == {f"sku-{i}" for i in range(10)}


def test_filter_by_category(search):
    found = search.find("lamp", category="garden")
    assert set(found) == {"sku-0", "sku-4", "sku-8"}


def test_discontinue_a_category(search, es_client):
    assert search.discontinue("toys") == 500
    assert search.in_category("toys") == 0
    assert es_client.count(index="catalogue")["count"] == PRODUCTS - 500


def test_every_category_is_back(search):
    for category in ("garden", "kitchen", "toys", "books"):
        assert search.in_category(category) == 500


def test_new_products_written_without_refresh(search):
    # Not refreshed: not searchable yet, but written; rollback removes them all the same.
    for i in range(3):
        search.add(f"new-{i}", f"Fresh lamp {i}", "garden", 10)
    assert "new-0" not in search.find("fresh")


def test_unrefreshed_products_are_gone(search, es_client):
    es_client.indices.refresh(index="catalogue")
    assert search.find("fresh") == []
    assert es_client.count(index="catalogue")["count"] == PRODUCTS


def test_mapping_migration_and_a_scratch_index(search, es_client, rollback):
    search.reindex_with_brand()
    es_client.indices.create(index="scratch")
    es_client.indices.put_alias(index="scratch", name="catalogue-staging")
    changes = rollback.changes()["elasticsearch"]
    assert "products (mapping)" in changes.modified and "scratch" in changes.added


def test_mapping_and_indices_as_they_were(es_client):
    mapping = es_client.indices.get_mapping(index="products")["products"]["mappings"]["properties"]
    assert "brand" not in mapping
    assert not es_client.indices.exists(index="scratch")
    assert list(es_client.indices.get_alias(name="catalogue")) == ["products"]
