"""The Redis prediction store: replicas behind one Service share pending predictions.

Layout (``P`` = ``key_prefix``)::

    P p:<row>:<request id>   hash  s (state: P pending, L labelled, E expired),
                                   m model, v version, x value, t time, e expires
    P pending:<model>        zset  keys of pending predictions, scored by expiry

A label is taken by one Lua script per label (``TAKE``): it reads the hash,
checks model, state and expiry, and marks it labelled in one atomic step, so
a label sent to several replicas at once matches exactly once. Redis keeps
the TTLs: a prediction's hash expires ``remember_seconds`` after its own TTL,
and a labelled one ``remember_seconds`` after its label. The ``SWEEP`` script
moves pending predictions past their TTL out of the model's zset (counting
each exactly once across replicas) and trims the zset to ``max_entries``.

Standalone Redis (or a primary with replicas) only: the scripts touch keys
they read from the zset, which Redis Cluster does not allow. The ``redis``
package is an optional extra, imported when this store opens.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sidecar.errors import MissingDependencyError
from sidecar.labels.errors import StoreError
from sidecar.labels.types import (
    Found,
    Lookup,
    PutResult,
    StoredPrediction,
    SweepResult,
    TakeResult,
)

if TYPE_CHECKING:
    import redis

#: Most expired keys one SWEEP call handles (the next call goes on).
SWEEP_LIMIT = 5000

# KEYS: prediction key, its row-0 key, the label's model zset
# ARGV: label's model, now, remember (ms)
TAKE = """
local h = redis.call('HMGET', KEYS[1], 's', 'm', 'v', 'x', 't', 'e')
if not h[1] then
  if KEYS[2] ~= KEYS[1] and redis.call('EXISTS', KEYS[2]) == 1 then return {'bad_row'} end
  return {'unknown'}
end
if h[2] ~= ARGV[1] then return {'wrong_model', h[2]} end
if h[1] == 'L' then return {'duplicate'} end
if h[1] == 'E' or tonumber(h[6]) <= tonumber(ARGV[2]) then return {'expired'} end
redis.call('HSET', KEYS[1], 's', 'L')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[3], KEYS[1])
return {'matched', h[3], h[4], h[5], h[6]}
"""

# KEYS: the model's zset
# ARGV: now, max entries, model, remember (ms), limit
SWEEP = """
local expired = 0
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[5])
for _, k in ipairs(keys) do
  redis.call('ZREM', KEYS[1], k)
  local h = redis.call('HMGET', k, 's', 'm')
  if h[1] == 'P' and h[2] == ARGV[3] then
    redis.call('HSET', k, 's', 'E')
    redis.call('PEXPIRE', k, ARGV[4])
    expired = expired + 1
  end
end
local evicted = 0
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do
    evicted = evicted + redis.call('DEL', popped[i])
  end
end
return {expired, evicted, redis.call('ZCARD', KEYS[1]), #keys}
"""


def import_redis() -> Any:
    """The ``redis`` package, or MissingDependencyError naming the extra to install."""
    try:
        import redis
    except ImportError as exc:
        raise MissingDependencyError(
            "labels.backend 'redis' needs the redis package: pip install 'inference-sidecar[redis]'"
        ) from exc
    return redis


class RedisStore:
    """Predictions in a Redis shared by every replica."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        max_entries: int,
        remember_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._max = max_entries
        self._remember_ms = max(int(remember_seconds * 1000), 1)
        self._remember_s = remember_seconds
        self._timeout = timeout_seconds
        self._client: redis.Redis | None = None
        self._take: Any = None
        self._sweep: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

    def _key(self, request_id: str, row: int) -> str:
        return f"{self._prefix}p:{row}:{request_id}"

    def _zset(self, model: str) -> str:
        return f"{self._prefix}pending:{model}"

    def open(self) -> None:
        """Make the client (it connects on first use: a Redis that is down is not fatal)."""
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors = (redis.RedisError,)
        self._client = redis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
            client_name="inference-sidecar",
        )
        self._take = self._client.register_script(TAKE)
        self._sweep = self._client.register_script(SWEEP)

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise StoreError(f"redis store {self._where}: not open")
        return self._client

    @property
    def _where(self) -> str:
        return self._url.split("@")[-1]  # never log a password

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreError(
                f"redis store {self._where}: {what} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        """One pipelined round trip: a hash, its expiry and a zset entry per row."""
        with self._guard("write"):
            pipe = self._redis.pipeline(transaction=False)
            for row in rows:
                key = self._key(row.request_id, row.row)
                pipe.hset(
                    key,
                    mapping={
                        "s": "P",
                        "m": row.model,
                        "v": row.version,
                        "x": repr(row.value),
                        "t": repr(row.time),
                        "e": repr(row.expires),
                    },
                )
                keep = max(row.expires - now, 0.0) + self._remember_s
                pipe.pexpire(key, max(math.ceil(keep * 1000), 1))
                pipe.zadd(self._zset(row.model), {key: row.expires})
            pipe.execute()
        return PutResult({})

    def take(self, lookups: Sequence[Lookup], now: float) -> list[TakeResult]:
        """One TAKE script per lookup, pipelined; each is atomic on the server."""
        with self._guard("read"):
            pipe = self._redis.pipeline(transaction=False)
            for lookup in lookups:
                self._take(
                    keys=[
                        self._key(lookup.request_id, lookup.row),
                        self._key(lookup.request_id, 0),
                        self._zset(lookup.model),
                    ],
                    args=[lookup.model, repr(now), self._remember_ms],
                    client=pipe,
                )
            replies = pipe.execute()
        return [_result(lookup, reply) for lookup, reply in zip(lookups, replies, strict=True)]

    def sweep(self, now: float, models: Collection[str]) -> SweepResult:
        """Run SWEEP on each model's zset until it has no more expired keys."""
        expired: dict[str, int] = {}
        evicted: dict[str, int] = {}
        pending: dict[str, int] = {}
        with self._guard("sweep"):
            for model in models:
                while True:
                    n_expired, n_evicted, n_pending, seen = self._sweep(
                        keys=[self._zset(model)],
                        args=[repr(now), self._max, model, self._remember_ms, SWEEP_LIMIT],
                    )
                    expired[model] = expired.get(model, 0) + int(n_expired)
                    evicted[model] = evicted.get(model, 0) + int(n_evicted)
                    pending[model] = int(n_pending)
                    if int(seen) < SWEEP_LIMIT:
                        break
        return SweepResult(expired, evicted, pending)


def _result(lookup: Lookup, reply: list[str]) -> TakeResult:
    kind = reply[0]
    if kind == "matched":
        version, value, made, expires = reply[1:5]
        prediction = StoredPrediction(
            lookup.request_id,
            lookup.row,
            lookup.model,
            version,
            float(value),
            float(made),
            float(expires),
        )
        return TakeResult(Found.MATCHED, prediction)
    if kind == "wrong_model":
        return TakeResult(Found.WRONG_MODEL, other_model=reply[1])
    return TakeResult(Found(kind))
