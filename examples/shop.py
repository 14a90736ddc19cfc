"""A small shop backed by Redis: the application the example tests exercise.

Products are hashes (``product:<sku>`` with name, price in cents and stock), the
catalogue is a set of SKUs, carts are hashes, orders are hashes listed per user.
Feature flags live in this process, in a plain dict.
"""

from __future__ import annotations

import redis

#: In-process feature flags (the example suite registers this dict as a store of its own).
FEATURES: dict[str, bool] = {"express_checkout": False}


class OutOfStock(Exception):
    """A cart asks for more than the shop has."""


class Shop:
    """Catalogue, stock, carts and orders kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    @classmethod
    def from_url(cls, url: str) -> Shop:
        """A shop with a connection of its own, as the application makes it in production."""
        return cls(redis.Redis.from_url(url))

    def close(self) -> None:
        self.r.close()

    # catalogue -------------------------------------------------------------
    def add_product(self, sku: str, name: str, price_cents: int, stock: int) -> None:
        self.r.hset(f"product:{sku}", mapping={"name": name, "price": price_cents, "stock": stock})
        self.r.sadd("catalogue", sku)

    def price(self, sku: str) -> int:
        value = self.r.hget(f"product:{sku}", "price")
        if value is None:
            raise KeyError(sku)
        return int(value)

    def stock(self, sku: str) -> int:
        return int(self.r.hget(f"product:{sku}", "stock") or 0)

    # carts -----------------------------------------------------------------
    def add_to_cart(self, user: str, sku: str, qty: int = 1) -> None:
        self.price(sku)  # unknown products raise KeyError
        self.r.hincrby(f"cart:{user}", sku, qty)

    def cart(self, user: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(f"cart:{user}").items()}

    def cart_total(self, user: str) -> int:
        return sum(self.price(sku) * qty for sku, qty in self.cart(user).items())

    # orders ----------------------------------------------------------------
    def checkout(self, user: str) -> str:
        """Turn the cart into an order, take the stock, empty the cart; returns the order id."""
        cart = self.cart(user)
        if not cart:
            raise ValueError("empty cart")
        for sku, qty in cart.items():
            if self.stock(sku) < qty:
                raise OutOfStock(sku)
        order_id = f"order:{self.r.incr('order:seq')}"
        shipping = "express" if FEATURES["express_checkout"] else "standard"
        with self.r.pipeline(transaction=True) as pipe:
            for sku, qty in cart.items():
                pipe.hincrby(f"product:{sku}", "stock", -qty)
            pipe.hset(
                order_id,
                mapping={"user": user, "total": self.cart_total(user), "shipping": shipping, "status": "placed"},
            )
            pipe.hset(f"{order_id}:items", mapping=cart)
            pipe.rpush(f"orders:{user}", order_id)
            pipe.delete(f"cart:{user}")
            pipe.execute()
        return order_id

    def pay(self, order_id: str) -> None:
        self._move(order_id, "placed", "paid")

    def ship(self, order_id: str) -> None:
        self._move(order_id, "paid", "shipped")

    def cancel(self, order_id: str) -> None:
        """Cancel a placed or paid order: its items go back to stock."""
        status = self.order(order_id)["status"]
        if status not in ("placed", "paid"):
            raise ValueError(f"{order_id} is {status}: too late to cancel")
        for sku, qty in self.r.hgetall(f"{order_id}:items").items():
            self.r.hincrby(f"product:{sku.decode()}", "stock", int(qty))
        self.r.hset(order_id, "status", "cancelled")

    def _move(self, order_id: str, before: str, after: str) -> None:
        status = self.order(order_id)["status"]
        if status != before:
            raise ValueError(f"{order_id} is {status}, not {before}")
        self.r.hset(order_id, "status", after)

    def orders(self, user: str) -> list[str]:
        return [o.decode() for o in self.r.lrange(f"orders:{user}", 0, -1)]

    def order(self, order_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(order_id).items()}


def record_view(redis_url: str, sku: str) -> int:
    """What the web tier does on a product page: count the view, over its own connection."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.incr(f"views:{sku}"))
    finally:
        client.close()
