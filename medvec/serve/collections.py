"""A home's collections behind one server: `?collection=NAME` on /api/* reaches that collection's own app
(HTTP) or search (MCP), opened on first use and kept while recently used (at most MAX_OPEN at once), and
GET /api/collections lists them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import parse_qs

import anyio
from fastapi import APIRouter, HTTPException, Query

from medvec.home import collection_names
from medvec.serve.schema import REQUEST_COLLECTION, CollectionsOut
from medvec.settings import Settings

#: Open collections at most: each holds its own search; collections with one model share its encoder.
MAX_OPEN = 4
COLLECTION_HELP = "the collection to search (GET /api/collections lists them; default: the server's own)"

T = TypeVar("T")


class UnknownCollection(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"no collection {name!r} in this home; known: {', '.join(known) or 'none'}")


@dataclass(eq=False)
class Lease(Generic[T]):
    """One open collection's value and how many callers hold it now."""
    value: T
    users: int = 0
    evicted: bool = False


class OpenCollections(Generic[T]):
    """One value (an app, a search) per collection of the settings' home, opened by `open_value` on first
    use. Beyond `max_open`, the least recently used is closed by `close_value` once no caller holds it."""

    def __init__(self, settings: Settings, open_value: Callable[[Settings], T], close_value: Callable[[T], None],
                 max_open: int = MAX_OPEN):
        self.settings, self.max_open = settings, max_open
        self._open_value, self._close_value = open_value, close_value
        self._open: OrderedDict[str, Lease[T]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def default(self) -> str | None:
        """The collection the server answers without `?collection=` (None: the home itself)."""
        return self.settings.collection

    def names(self) -> list[str]:
        return collection_names(self.settings.root_home)

    def open_names(self) -> list[str]:
        with self._lock:
            return list(self._open)

    def acquire(self, name: str) -> Lease[T]:
        """The collection's value, held until `release`; UnknownCollection when the home has no such one."""
        closing: list[T] = []
        with self._lock:
            lease = self._open.get(name)
            if lease is None:
                known = self.names()
                if name not in known:
                    raise UnknownCollection(name, known)
                lease = self._open[name] = Lease(self._open_value(self.settings.for_collection(name)))
                closing = self._evict()
            self._open.move_to_end(name)
            lease.users += 1
        for value in closing:
            self._close_value(value)
        return lease

    def release(self, lease: Lease[T]) -> None:
        with self._lock:
            lease.users -= 1
            close = lease.evicted and lease.users == 0
        if close:  # evicted while a request still used it: closed now that the last one is done
            self._close_value(lease.value)

    @contextmanager
    def held(self, name: str):
        lease = self.acquire(name)
        try:
            yield lease.value
        finally:
            self.release(lease)

    def close(self) -> None:
        with self._lock:
            leases = list(self._open.values())
            self._open.clear()
        for lease in leases:
            self._close_value(lease.value)

    def _evict(self) -> list[T]:
        """Drop the least recently used beyond `max_open`; return those no caller holds, to close now."""
        closing = []
        while len(self._open) > self.max_open:
            _, lease = self._open.popitem(last=False)
            lease.evicted = True
            if lease.users == 0:
                closing.append(lease.value)
        return closing


# --- HTTP ------------------------------------------------------------------------------------------

class CollectionDispatch:
    """ASGI middleware: an /api/* request with `?collection=NAME` goes to that collection's app. An unknown
    name goes on to this app, whose `known_collection` dependency answers 404 after the token check."""

    def __init__(self, app, collections: OpenCollections):
        self.app, self.collections = app, collections

    async def __call__(self, scope, receive, send):
        name = _requested(scope)
        if not name or name == self.collections.default:
            await self.app(scope, receive, send)
            return
        try:  # opening a collection reads its folder and table database: not on the event loop
            lease = await anyio.to_thread.run_sync(self.collections.acquire, name)
        except UnknownCollection:
            await self.app(scope, receive, send)
            return
        token = REQUEST_COLLECTION.set(name)
        try:
            await lease.value(scope, receive, send)
        finally:
            REQUEST_COLLECTION.reset(token)
            self.collections.release(lease)


def _requested(scope) -> str | None:
    if scope["type"] != "http" or not scope["path"].startswith("/api/"):
        return None
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("collection")
    return values[-1] if values else None


def known_collection(collections: OpenCollections, name_them: bool = True):
    """A dependency of every /api/* route: documents `?collection=` and refuses a name the home lacks
    (naming the known ones when `name_them`)."""

    def require_known(collection: str | None = Query(None, description=COLLECTION_HELP)) -> None:
        if collection and collection != collections.default and collection not in (known := collections.names()):
            raise HTTPException(404, str(UnknownCollection(collection, known)) if name_them
                                else f"no collection {collection!r} in this home")

    return require_known


def collections_router(collections: OpenCollections) -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get("/collections", response_model=CollectionsOut, summary="The home's collections",
                description="Each collection of the home (a chest collection, a dermatology one ...) with its "
                            "images; `default` marks the one answered without `?collection=`. Add "
                            "`?collection=NAME` to any /api/* route to ask that collection.")
    def list_collections() -> dict:
        from medvec.tables.inventory import home_collections

        return {"collections": home_collections(collections.settings)}

    return router
