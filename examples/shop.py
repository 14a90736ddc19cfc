"""A small shop backed by Redis: the "application" the example tests exercise."""

from __future__ import annotations

import redis


class Shop:
    """Catalogue, stock, carts and orders kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    # catalogue -------------------------------------------------------------
    def add_product(self, sku: str, name: str, price_cents: int, stock: int) -> None:
        self.r.hset(f"product:{sku}", mapping={"name": name, "price": price_cents})
        self.r.set(f"stock:{sku}", stock)
        self.r.sadd("catalogue", sku)

    def price(self, sku: str) -> int:
        value = self.r.hget(f"product:{sku}", "price")
        if value is None:
            raise KeyError(sku)
        return int(value)

    def stock(self, sku: str) -> int:
        return int(self.r.get(f"stock:{sku}") or 0)

    # carts -----------------------------------------------------------------
    def add_to_cart(self, user: str, sku: str, qty: int = 1) -> None:
        self.price(sku)  # unknown products raise
        self.r.hincrby(f"cart:{user}", sku, qty)

    def cart(self, user: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(f"cart:{user}").items()}

    def cart_total(self, user: str) -> int:
        return sum(self.price(sku) * qty for sku, qty in self.cart(user).items())

    # orders ----------------------------------------------------------------
    def checkout(self, user: str) -> str:
        cart = self.cart(user)
        if not cart:
            raise ValueError("empty cart")
        for sku, qty in cart.items():
            if self.stock(sku) < qty:
                raise ValueError(f"out of stock: {sku}")
        order_id = f"order:{self.r.incr('order:seq')}"
        with self.r.pipeline(transaction=True) as pipe:
            for sku, qty in cart.items():
                pipe.decrby(f"stock:{sku}", qty)
            pipe.hset(order_id, mapping={"user": user, "total": self.cart_total(user)})
            pipe.rpush(f"orders:{user}", order_id)
            pipe.delete(f"cart:{user}")
            pipe.execute()
        return order_id

    def orders(self, user: str) -> list[str]:
        return [o.decode() for o in self.r.lrange(f"orders:{user}", 0, -1)]

    # sessions --------------------------------------------------------------
    def login(self, user: str, ttl_seconds: int = 3600) -> str:
        token = f"session:{user}"
        self.r.set(token, user, ex=ttl_seconds)
        return token
