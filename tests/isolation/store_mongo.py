"""MongoDB for the randomized isolation suite: documents, indexes, collection options, capped,
validated and time-series collections, views, collection and database DDL.

Everything happens in the worker's own database (``mongo_db``: ``test_gw0``, ``test_gw1``
under xdist), the one the plugin rolls back for that worker; dropping it is how a test
drops "a database", and any write to a collection that does not exist creates it again.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

import pymongo
from bson import json_util
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, ReturnDocument, UpdateMany, UpdateOne

STORE = "mongo"
CLIENT_FIXTURE = "mongo_db"
#: A server's refusals (duplicate keys, a validator, a name in use, a missing collection) are not bugs.
EXPECTED_ERRORS = (pymongo.errors.PyMongoError,)

PLAIN = ["c0", "c1", "c2", "c3"]
CAPPED = ["cap0", "cap1"]
OTHERS = ["v0", "v1", "ts0", "val0"]
NAMES = PLAIN + CAPPED + OTHERS
_JSON = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)


def dump(db: Any) -> dict[str, Any]:
    """The worker's database: whether it exists, and per collection or view its type and options,
    its indexes (``v`` and ``ns`` left out: server bookkeeping), and its documents as canonical
    extended JSON (types and field order exact), in natural order for a capped collection and
    keyed by ``_id`` otherwise (a repeated ``_id``, possible in a time-series collection, keyed
    again with `` again``). Left out as volatile: the collections' ``info.uuid``. Left out as
    the server's own: ``system.*`` collections."""
    state: dict[str, Any] = {"(database exists)": db.name in db.client.list_database_names()}
    for info in db.list_collections():
        name = info["name"]
        if name.startswith("system."):
            continue
        options = json_util.dumps(info.get("options", {}), json_options=_JSON)
        if info.get("type") == "view":
            state[name] = {"type": "view", "options": options}
            continue
        indexes = {
            spec["name"]: json_util.dumps({k: v for k, v in spec.items() if k not in ("v", "ns")}, json_options=_JSON)
            for spec in db[name].list_indexes()
        }
        content: Any = {}
        for doc in db[name].find({}):
            key = json_util.dumps(doc["_id"], json_options=_JSON)
            while key in content:  # a time-series collection: _id is not unique there
                key += " again"
            content[key] = json_util.dumps(doc, json_options=_JSON)
        if info.get("options", {}).get("capped"):
            content = list(content.values())
        state[name] = {"type": info.get("type"), "options": options, "indexes": indexes, "documents": content}
    return state


def _name(rng: random.Random, pool: list[str] = NAMES) -> str:
    return rng.choice(pool)


def _id(rng: random.Random) -> Any:
    return rng.choice([rng.randrange(20), f"s{rng.randrange(10)}", rng.randrange(5) + 0.5])


def _doc(rng: random.Random, with_id: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": _id(rng)} if with_id else {}
    for field in rng.sample(["a", "b", "n", "tags", "sub", "pad"], rng.randint(1, 4)):
        doc[field] = {
            "a": rng.randrange(100),
            "b": f"v{rng.randrange(50)}",
            "n": rng.random(),
            "tags": [rng.randrange(5) for _ in range(rng.randint(0, 3))],
            "sub": {"x": rng.randrange(9), "y": None},
            "pad": "p" * rng.randrange(400),
        }[field]
    return doc


def _filter(rng: random.Random) -> dict[str, Any]:
    return rng.choice([{"_id": _id(rng)}, {"a": {"$lt": rng.randrange(100)}}, {"b": f"v{rng.randrange(50)}"}, {}])


def _update(rng: random.Random) -> dict[str, Any]:
    return rng.choice(
        [
            {"$set": {"a": rng.randrange(100), "new": rng.randrange(9)}},
            {"$inc": {"a": 1}},
            {"$unset": {"b": ""}},
            {"$push": {"tags": rng.randrange(5)}},
            {"$rename": {"b": "bb"}},
            {"$setOnInsert": {"born": 1}, "$set": {"seen": True}},
        ]
    )


def _insert(rng: random.Random, db: Any) -> None:
    db[_name(rng)].insert_one(_doc(rng, with_id=rng.random() < 0.8))


def _insert_many(rng: random.Random, db: Any) -> None:
    docs = [_doc(rng, with_id=rng.random() < 0.7) for _ in range(rng.randint(1, 8))]
    db[_name(rng)].insert_many(docs, ordered=rng.random() < 0.5)


def _fill_capped(rng: random.Random, db: Any) -> None:
    """Enough inserts into a capped collection that it evicts its oldest documents."""
    name = _name(rng, CAPPED)
    db[name].insert_many([{"i": rng.randrange(1000), "pad": "x" * 300} for _ in range(rng.randint(1, 12))])


def _update_one(rng: random.Random, db: Any) -> None:
    db[_name(rng)].update_one(_filter(rng), _update(rng), upsert=rng.random() < 0.3)


def _update_many(rng: random.Random, db: Any) -> None:
    db[_name(rng)].update_many(_filter(rng), _update(rng), upsert=rng.random() < 0.3)


def _replace(rng: random.Random, db: Any) -> None:
    db[_name(rng)].replace_one(_filter(rng), _doc(rng, with_id=False), upsert=rng.random() < 0.3)


def _update_nothing(rng: random.Random, db: Any) -> None:
    """An update that matches nothing, on a collection that may not exist (SecantusDB creates it)."""
    coll = db[_name(rng)]
    rng.choice([coll.update_one, coll.update_many])({"_id": "no such document"}, {"$set": {"x": 1}})


def _delete(rng: random.Random, db: Any) -> None:
    coll = db[_name(rng)]
    if rng.random() < 0.5:
        coll.delete_one(_filter(rng))
    else:
        coll.delete_many(_filter(rng))


def _bulk(rng: random.Random, db: Any) -> None:
    makers = [
        lambda: InsertOne(_doc(rng)),
        lambda: UpdateOne(_filter(rng), _update(rng), upsert=rng.random() < 0.3),
        lambda: UpdateMany(_filter(rng), _update(rng)),
        lambda: ReplaceOne(_filter(rng), _doc(rng, with_id=False), upsert=rng.random() < 0.3),
        lambda: DeleteOne(_filter(rng)),
        lambda: DeleteMany(_filter(rng)),
    ]
    ops = [rng.choice(makers)() for _ in range(rng.randint(1, 6))]
    db[_name(rng)].bulk_write(ops, ordered=rng.random() < 0.5)


def _find_and_modify(rng: random.Random, db: Any) -> None:
    coll = db[_name(rng)]
    after = rng.choice([ReturnDocument.BEFORE, ReturnDocument.AFTER])
    kind = rng.randrange(3)
    if kind == 0:
        coll.find_one_and_update(_filter(rng), _update(rng), upsert=rng.random() < 0.3, return_document=after)
    elif kind == 1:
        coll.find_one_and_replace(_filter(rng), _doc(rng, False), upsert=rng.random() < 0.3, return_document=after)
    else:
        coll.find_one_and_delete(_filter(rng))


def _create_index(rng: random.Random, db: Any) -> None:
    coll = db[_name(rng, PLAIN + CAPPED + ["val0", "ts0"])]
    kind = rng.randrange(5)
    if kind == 0:
        coll.create_index("a")
    elif kind == 1:
        coll.create_index("b", unique=True)  # refused where two documents share a b
    elif kind == 2:
        coll.create_index([("a", -1), ("b", 1)], name="ab", sparse=True)
    elif kind == 3:
        coll.create_index("n", partialFilterExpression={"a": {"$gt": 10}})
    else:
        coll.create_index("exp", expireAfterSeconds=3600)  # a TTL on a field never holding a date


def _drop_index(rng: random.Random, db: Any) -> None:
    coll = db[_name(rng)]
    if rng.random() < 0.2:
        coll.drop_indexes()
    else:
        coll.drop_index(rng.choice(["a_1", "b_1", "ab", "n_1", "exp_1"]))


def _create(rng: random.Random, db: Any) -> None:
    kind = rng.randrange(5)
    name = [_name(rng, PLAIN), _name(rng, CAPPED), "val0", _name(rng, ["v0", "v1"]), "ts0"][kind]
    if rng.random() < 0.5:
        db.drop_collection(name)  # else it may exist already (and the create is refused)
    if kind == 0:
        db.create_collection(name)
    elif kind == 1:
        size = rng.choice([4096, 100_000])
        extra = {"max": rng.randint(3, 8)} if size > 4096 else {}
        db.create_collection(name, capped=True, size=size, **extra)
    elif kind == 2:
        db.create_collection(name, validator={"$jsonSchema": {"required": ["a"]}}, validationAction="error")
    elif kind == 3:
        db.create_collection(name, viewOn=_name(rng, PLAIN), pipeline=[{"$match": {"a": {"$gt": rng.randrange(50)}}}])
    else:
        db.create_collection(name, timeseries={"timeField": "at", "metaField": "m", "granularity": "hours"})


def _time_series(rng: random.Random, db: Any) -> None:
    at = datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=rng.randrange(10_000))
    db.ts0.insert_many([{"at": at, "m": rng.randrange(3), "v": rng.random()} for _ in range(rng.randint(1, 4))])


def _coll_mod(rng: random.Random, db: Any) -> None:
    name = _name(rng, PLAIN + ["val0"])
    kind = rng.randrange(4)
    if kind == 0:
        db.command("collMod", name, validator={"a": {"$exists": True}}, validationLevel="moderate")
    elif kind == 1:
        db.command("collMod", name, validator={}, validationLevel="off")
    elif kind == 2:
        db.command("collMod", name, validationAction="warn")
    else:
        db.command("collMod", _name(rng, ["v0", "v1"]), viewOn=_name(rng, PLAIN), pipeline=[])


def _drop(rng: random.Random, db: Any) -> None:
    db.drop_collection(_name(rng))


def _rename(rng: random.Random, db: Any) -> None:
    source, target = _name(rng, PLAIN + CAPPED + ["val0"]), _name(rng, PLAIN + ["val0"])
    db[source].rename(target, dropTarget=rng.random() < 0.5)


def _drop_database(rng: random.Random, db: Any) -> None:
    if rng.random() < 0.3:
        db.client.drop_database(db.name)
        if rng.random() < 0.5:
            db[_name(rng, PLAIN)].insert_one(_doc(rng))  # and made again


def _aggregate_out(rng: random.Random, db: Any) -> None:
    db[_name(rng, PLAIN)].aggregate([{"$match": {"a": {"$gt": rng.randrange(100)}}}, {"$out": _name(rng, PLAIN)}])


def _transaction(rng: random.Random, db: Any) -> None:
    with db.client.start_session() as session:
        session.start_transaction()
        db[_name(rng, PLAIN)].insert_one(_doc(rng, with_id=False), session=session)
        db[_name(rng, PLAIN)].update_many(_filter(rng), _update(rng), session=session)
        if rng.random() < 0.5:
            session.commit_transaction()
        else:
            session.abort_transaction()


OPS = [
    _insert, _insert, _insert_many, _fill_capped, _update_one, _update_many, _replace, _update_nothing, _delete,
    _bulk, _find_and_modify, _create_index, _drop_index, _create, _time_series, _coll_mod, _drop, _rename,
    _drop_database, _aggregate_out, _transaction,
]


def seed(db: Any, rng: random.Random, scope: str) -> None:
    """A few documents, and sometimes an index, a capped collection (full) or a view."""
    db[_name(rng, PLAIN)].insert_many([_doc(rng, with_id=False) | {"scope": scope} for _ in range(rng.randint(1, 4))])
    roll = rng.random()
    try:
        if roll < 0.2:
            _create_index(rng, db)
        elif roll < 0.4:
            _create(rng, db)
            _fill_capped(rng, db)
        elif roll < 0.5:
            _update_nothing(rng, db)
    except EXPECTED_ERRORS:
        pass
