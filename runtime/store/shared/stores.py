"""The shared stores a fleet's cache can live on: what one must do, and Redis.

NOTE: [a shared store is a few verbs]
The fleet's cache (``fleet_cache.py``) needs of a store only: entries by name with a
compare-and-set, blobs by sha256 (written once), leases (take if free, renew
and release only by their holder, expire on their own), and a last-used time
per entry for eviction, and a stamp per blob (the store's clock when it was
last written or claimed by a publish) so that eviction can collect the blobs
no entry names.  Signing, verifying, installing and the eviction
policy are the fleet cache's, so another store (a shared folder through fsspec, an
object store) is one more class here with these methods, and nothing in the
pipeline changes.  Every call either answers within the store's timeout or
raises :class:`StoreDown`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from stitch.core.errors import StitchError

from ...settings import SHARED_SCHEMES


class StoreDown(StitchError):
    """The shared store did not answer (unreachable, timed out, refused)."""


class SharedStore(Protocol):
    url: str

    def get_entry(self, unit: str) -> bytes | None: ...

    def put_entry(self, unit: str, data: bytes, expected: bytes | None) -> bool:
        """Store ``data`` as ``unit``'s entry if the entry is now ``expected``
        (None: absent); whether it was stored."""

    def delete_entry(self, unit: str, expected: bytes) -> bool: ...

    def has_blobs(self, shas: list[str]) -> list[bool]: ...

    def get_blob(self, sha: str) -> bytes | None: ...

    def put_blob(self, sha: str, data: bytes, replace: bool = False) -> None:
        """Store ``data`` as blob ``sha`` (kept if there, unless ``replace``)."""

    def delete_blob(self, sha: str) -> None:
        """Remove blob ``sha`` and its stamp."""

    def stamp_blobs(self, shas: list[str]) -> None:
        """Stamp the blobs ``shas`` (stored or about to be) with the store's
        clock: a publish claims them, so eviction leaves them alone a while."""

    def blob_ages(self) -> list[tuple[str, int, float]]:
        """Every blob stored or stamped: its sha256, size (0: not stored) and
        seconds since its stamp (a blob never stamped is stamped now: 0)."""

    def take_lease(self, unit: str, owner: str, seconds: float) -> bool: ...

    def renew_lease(self, unit: str, owner: str, seconds: float) -> bool: ...

    def release_lease(self, unit: str, owner: str) -> None: ...

    def lease_holder(self, unit: str) -> str | None: ...

    def touch(self, unit: str, when: float) -> None: ...

    def by_age(self) -> list[tuple[str, float]]:
        """Every entry's name and last use, least recently used first."""

    def close(self) -> None: ...


# Compare-and-set of an entry: ARGV[2] is the expected value, "" for absent.
_PUT_ENTRY = """
local cur = redis.call('GET', KEYS[1])
if ARGV[2] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
_DELETE_ENTRY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[2]); return 1
end
return 0
"""
_STAMP = """
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
for _, sha in ipairs(ARGV) do redis.call('ZADD', KEYS[1], now, sha) end
return 0
"""


class RedisStore:
    """A shared store on a Redis server (``redis://host:port/db``).

    Keys: ``stitch:entry:<unit>`` (signed manifests), ``stitch:blob:<sha256>``,
    ``stitch:lease:<unit>`` (with a TTL), ``stitch:used`` (a sorted set: each
    entry's last use), ``stitch:stamps`` (a sorted set: each blob's stamp, by
    the server's clock).  Every call times out after ``timeout`` seconds and is
    never retried: a store that does not answer is :class:`StoreDown`.
    """

    PREFIX = "stitch:"

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise StoreDown(
                f"{url} needs the redis client: pip install 'stitch[fleet]'"
            ) from None
        self.url = url
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
            )
        except (ValueError, *self._errors) as exc:
            raise StoreDown(f"{url}: {exc}") from None

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """The client's errors inside the block as :class:`StoreDown`."""
        try:
            yield
        except self._errors as exc:
            raise StoreDown(f"{self.url}: {type(exc).__name__}: {exc}") from None

    def _call(self, name: str, *args: Any) -> Any:
        with self._answering():
            return getattr(self._client, name)(*args)

    def _script(self, script: str, keys: list[str], *args: Any) -> Any:
        return self._call("eval", script, len(keys), *keys, *args)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.PREFIX}{kind}:{name}"

    def get_entry(self, unit: str) -> bytes | None:
        return self._call("get", self._key("entry", unit))

    def put_entry(self, unit: str, data: bytes, expected: bytes | None) -> bool:
        return bool(
            self._script(_PUT_ENTRY, [self._key("entry", unit)], data, expected or b"")
        )

    def delete_entry(self, unit: str, expected: bytes) -> bool:
        keys = [self._key("entry", unit), self.PREFIX + "used"]
        return bool(self._script(_DELETE_ENTRY, keys, expected, unit))

    def has_blobs(self, shas: list[str]) -> list[bool]:
        if not shas:
            return []
        with self._answering():
            pipe = self._client.pipeline(transaction=False)
            for sha in shas:
                pipe.exists(self._key("blob", sha))
            return [bool(n) for n in pipe.execute()]

    def get_blob(self, sha: str) -> bytes | None:
        return self._call("get", self._key("blob", sha))

    def put_blob(self, sha: str, data: bytes, replace: bool = False) -> None:
        self._call("set", self._key("blob", sha), data, None, None, not replace)

    def delete_blob(self, sha: str) -> None:
        with self._answering():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._key("blob", sha))
            pipe.zrem(self.PREFIX + "stamps", sha)
            pipe.execute()

    def stamp_blobs(self, shas: list[str]) -> None:
        if shas:
            self._script(_STAMP, [self.PREFIX + "stamps"], *shas)

    def blob_ages(self) -> list[tuple[str, int, float]]:
        blob = self._key("blob", "")
        with self._answering():
            sec, usec = self._client.time()
            now = sec + usec / 1e6
            stamps = {
                name.decode(errors="replace"): float(when)
                for name, when in self._client.zrange(
                    self.PREFIX + "stamps", 0, -1, withscores=True
                )
            }
            stored = [
                key.decode(errors="replace")[len(blob) :]
                for key in self._client.scan_iter(match=blob + "*", count=1000)
            ]
            pipe = self._client.pipeline(transaction=False)
            for sha in stored:
                pipe.strlen(blob + sha)
            sizes = dict(zip(stored, pipe.execute(), strict=True))
        unstamped = [sha for sha in stored if sha not in stamps]
        # Stamped now, so that a blob whose stamp was lost (a server evicting
        # keys itself) ages out like any other.
        self.stamp_blobs(unstamped)
        return [
            (sha, int(sizes.get(sha, 0)), max(0.0, now - stamps.get(sha, now)))
            for sha in sorted(set(stored) | set(stamps))
        ]

    # NOTE: [a lease is redis-py's Lock]
    # A unit's lease is redis-py's ``Lock`` on ``stitch:lease:<unit>`` with the
    # replica's owner string as its token: taken with a non-blocking acquire
    # (SET NX PX), renewed with ``reacquire`` (the TTL set anew, only by the
    # token's holder) and released only by its holder; a dead holder's lease
    # lapses with the TTL.  The lease's holder is read as the key's value
    # (``lease_holder``: who a waiting replica is waiting for).  Waiting and
    # renewing stay ours: NOTE: [the wait is not Lock's blocking acquire]
    # in lease.py.
    def _lease(self, unit: str, owner: str, seconds: float | None = None) -> Any:
        lock = self._client.lock(
            self._key("lease", unit), timeout=seconds, thread_local=False
        )
        lock.local.token = owner.encode()
        return lock

    def _held(self, act: Callable[[], Any]) -> bool:
        """``act()``'s answer on the lease: False when it is another's (or none)."""
        from redis.exceptions import LockNotOwnedError

        with self._answering():
            try:
                return bool(act())
            except LockNotOwnedError:
                return False

    def take_lease(self, unit: str, owner: str, seconds: float) -> bool:
        lock = self._lease(unit, owner, max(0.001, seconds))
        return self._held(lambda: lock.acquire(blocking=False, token=owner))

    def renew_lease(self, unit: str, owner: str, seconds: float) -> bool:
        return self._held(self._lease(unit, owner, max(0.001, seconds)).reacquire)

    def release_lease(self, unit: str, owner: str) -> None:
        self._held(self._lease(unit, owner).release)

    def lease_holder(self, unit: str) -> str | None:
        holder = self._call("get", self._key("lease", unit))
        return holder.decode(errors="replace") if holder is not None else None

    def touch(self, unit: str, when: float) -> None:
        self._call("zadd", self.PREFIX + "used", {unit: when})

    def by_age(self) -> list[tuple[str, float]]:
        pairs = self._call("zrange", self.PREFIX + "used", 0, -1, False, True)
        return [(name.decode(errors="replace"), float(when)) for name, when in pairs]

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self._client.close()


def open_store(url: str, timeout: float = 2.0) -> SharedStore:
    """The store ``url`` names; raises :class:`StoreDown` for an unknown scheme."""
    if url.startswith(SHARED_SCHEMES):
        return RedisStore(url, timeout)
    raise StoreDown(f"{url}: no shared store for this URL scheme")
