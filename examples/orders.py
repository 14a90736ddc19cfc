"""An order workflow across Redis and MongoDB: the application ``test_order_workflow.py`` explores.

Redis holds what must be fast: each customer's wallet (in cents), the stock of
each product (the shop's ``product:<sku>`` hashes) and a pointer to the
customer's open order. MongoDB holds the records: the ``orders`` (items, total,
state) and the ``payments`` ledger (charges and refunds).

An order goes ``cart`` -> ``paid`` -> ``refunded``; a cart or a paid order may
be ``cancelled``. Adding an item reserves its stock; a refund or a cancellation
puts the stock back and closes the order.

It has a bug: ``cancel`` refuses only orders that are already closed, so a
*paid* order can be cancelled, and the money charged is never given back. Only
the four steps create a cart, add an item, pay, cancel reach it.
"""

from __future__ import annotations

from typing import Any

import redis

#: What every customer's wallet holds before any order (the example suite seeds it).
WALLET = 10_000


class OrderError(Exception):
    """The order is not in a state that allows this."""


class Orders:
    """Carts, payments, refunds and cancellations; money and stock in Redis, records in MongoDB."""

    def __init__(self, r: redis.Redis, db: Any) -> None:
        self.r = r
        self.db = db

    # reading ---------------------------------------------------------------
    def open_order(self, user: str) -> dict[str, Any] | None:
        """The customer's open order (a cart or a paid order), or None."""
        order_id = self.r.get(f"open-order:{user}")
        return self.db.orders.find_one({"_id": order_id.decode()}) if order_id else None

    def wallet(self, user: str) -> int:
        return int(self.r.get(f"wallet:{user}") or 0)

    def stock(self, sku: str) -> int:
        return int(self.r.hget(f"product:{sku}", "stock") or 0)

    def price(self, sku: str) -> int:
        return int(self.r.hget(f"product:{sku}", "price") or 0)

    def paid_in(self, order_id: str) -> int:
        """What the ledger says the customer paid for an order: charges minus refunds."""
        total = 0
        for entry in self.db.payments.find({"order": order_id}):
            total += entry["amount"] if entry["kind"] == "charge" else -entry["amount"]
        return total

    # the workflow ----------------------------------------------------------
    def create_cart(self, user: str) -> str:
        if self.r.exists(f"open-order:{user}"):
            raise OrderError(f"{user} already has an open order")
        order_id = f"order-{self.r.incr('order-seq')}"
        self.db.orders.insert_one({"_id": order_id, "user": user, "items": {}, "total": 0, "state": "cart"})
        self.r.set(f"open-order:{user}", order_id)
        return order_id

    def add_item(self, user: str, sku: str) -> None:
        order = self._open(user, "cart")
        if self.stock(sku) < 1:
            raise OrderError(f"{sku} is out of stock")
        self.r.hincrby(f"product:{sku}", "stock", -1)  # reserved for this cart
        self.db.orders.update_one(
            {"_id": order["_id"]}, {"$inc": {f"items.{sku}": 1, "total": self.price(sku)}}
        )

    def pay(self, user: str) -> None:
        order = self._open(user, "cart")
        if not order["items"]:
            raise OrderError("an empty cart cannot be paid")
        if self.wallet(user) < order["total"]:
            raise OrderError(f"{user} cannot pay {order['total']}")
        self.r.decrby(f"wallet:{user}", order["total"])
        self._ledger(order, "charge")
        self.db.orders.update_one({"_id": order["_id"]}, {"$set": {"state": "paid"}})

    def refund(self, user: str) -> None:
        order = self._open(user, "paid")
        self.r.incrby(f"wallet:{user}", order["total"])
        self._ledger(order, "refund")
        self._close(user, order, "refunded")

    def cancel(self, user: str) -> None:
        order = self.open_order(user)
        if order is None or order["state"] in ("refunded", "cancelled"):  # BUG: a paid order gets through
            raise OrderError(f"{user} has nothing to cancel")
        self._close(user, order, "cancelled")

    # helpers ---------------------------------------------------------------
    def _open(self, user: str, state: str) -> dict[str, Any]:
        order = self.open_order(user)
        if order is None or order["state"] != state:
            raise OrderError(f"{user} has no open order in state {state!r}")
        return order

    def _ledger(self, order: dict[str, Any], kind: str) -> None:
        """One entry of the payments ledger: an order is charged once, and refunded at most once."""
        entry = {"_id": f"{order['_id']}:{kind}", "order": order["_id"], "kind": kind, "amount": order["total"]}
        self.db.payments.insert_one(entry)

    def _close(self, user: str, order: dict[str, Any], state: str) -> None:
        """Put the order's stock back and close it."""
        for sku, qty in order["items"].items():
            self.r.hincrby(f"product:{sku}", "stock", qty)
        self.db.orders.update_one({"_id": order["_id"]}, {"$set": {"state": state}})
        self.r.delete(f"open-order:{user}")
