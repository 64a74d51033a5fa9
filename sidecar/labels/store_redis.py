"""The Redis prediction store: replicas behind one Service share pending predictions.

Layout (``P`` = ``key_prefix``)::

    P p:<row>:<request id>   hash  s (state: P pending, L labelled, E expired),
                                   m model, v version, x value, t time, e expires,
                                   sv, sx shadow version and its prediction (ATTACH),
                                   a the label it was taken with (TAKE)
    P pending:<model>        zset  keys of pending predictions, scored by expiry

Writes and label lookups run as Lua scripts over chunks of rows (``PUT``,
``TAKE``): one round trip per flush or label batch. ``TAKE`` reads each hash,
checks model, state and expiry and marks it labelled, atomically, so a label
sent to several replicas at once matches exactly once. Redis keeps
the TTLs: a prediction's hash expires ``remember_seconds`` after its own TTL,
and a labelled one ``remember_seconds`` after its label. The ``SWEEP`` script
moves pending predictions past their TTL out of the model's zset (counting
each exactly once across replicas) and trims the zset to ``max_entries``.
``ATTACH`` writes a shadow version's prediction into its primary's hash (no
new key, the hash's TTL unchanged), or, when the primary was labelled first
and has no shadow prediction yet, writes it and returns the stored label.

Standalone Redis (or a primary with replicas) only: the scripts touch keys
they read from the zset, which Redis Cluster does not allow. The ``redis``
package is an optional extra, imported when this store opens.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sidecar.errors import MissingDependencyError
from sidecar.labels.errors import StoreError
from sidecar.labels.types import (
    AttachResult,
    Found,
    Lookup,
    PutResult,
    ShadowRow,
    StoredPrediction,
    SweepResult,
    TakeResult,
)

if TYPE_CHECKING:
    import redis

#: Most expired keys one SWEEP call handles (the next call goes on).
SWEEP_LIMIT = 5000

#: Rows (or lookups) per script call: bounds how long one call holds Redis.
CHUNK = 500

# ARGV: prefix, now, remember (ms), then per row: request id, row, model, version,
# value, time, expires (strings, stored as sent so floats round-trip exactly)
PUT = """
local prefix, now, remember = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 7 do
  local key = prefix .. 'p:' .. ARGV[i + 1] .. ':' .. ARGV[i]
  redis.call('HSET', key, 's', 'P', 'm', ARGV[i + 2], 'v', ARGV[i + 3], 'x', ARGV[i + 4],
             't', ARGV[i + 5], 'e', ARGV[i + 6])
  local keep = math.max(tonumber(ARGV[i + 6]) - now, 0) * 1000 + remember
  redis.call('PEXPIRE', key, math.max(math.ceil(keep), 1))
  redis.call('ZADD', prefix .. 'pending:' .. ARGV[i + 2], ARGV[i + 6], key)
end
return (#ARGV - 3) / 7
"""

# ARGV: prefix, now, remember (ms), then per lookup: request id, row, model, label
# ('' for none). One reply per lookup, in order; the whole call is atomic.
TAKE = """
local prefix, now, remember = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV, 4 do
  local rid, row, model, actual = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = prefix .. 'p:' .. row .. ':' .. rid
  local h = redis.call('HMGET', key, 's', 'm', 'v', 'x', 't', 'e', 'sv', 'sx')
  local r
  if not h[1] then
    if row ~= '0' and redis.call('EXISTS', prefix .. 'p:0:' .. rid) == 1 then
      r = {'bad_row'}
    else
      r = {'unknown'}
    end
  elseif h[2] ~= model then
    r = {'wrong_model', h[2]}
  elseif h[1] == 'L' then
    r = {'duplicate'}
  elseif h[1] == 'E' or tonumber(h[6]) <= now then
    r = {'expired'}
  else
    redis.call('HSET', key, 's', 'L')
    if actual ~= '' then
      redis.call('HSET', key, 'a', actual)
    end
    redis.call('PEXPIRE', key, remember)
    redis.call('ZREM', prefix .. 'pending:' .. model, key)
    r = {'matched', h[3], h[4], h[5], h[6], h[7] or '', h[8] or ''}
  end
  out[#out + 1] = r
end
return out
"""

# ARGV: prefix, then per shadow row: request id, row, model, primary version,
# shadow version, value. One reply per row: 'attached', 'orphaned', or 'L:<label>'.
ATTACH = """
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV, 6 do
  local key = prefix .. 'p:' .. ARGV[i + 1] .. ':' .. ARGV[i]
  local h = redis.call('HMGET', key, 's', 'm', 'v', 'sv', 'a')
  local r = 'orphaned'
  if h[1] and h[2] == ARGV[i + 2] and h[3] == ARGV[i + 3] then
    if h[1] == 'P' then
      redis.call('HSET', key, 'sv', ARGV[i + 4], 'sx', ARGV[i + 5])
      r = 'attached'
    elseif h[1] == 'L' and not h[4] and h[5] then
      redis.call('HSET', key, 'sv', ARGV[i + 4], 'sx', ARGV[i + 5])
      r = 'L:' .. h[5]
    end
  end
  out[#out + 1] = r
end
return out
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


def shared_store_name(url: str, prefix: str) -> str:
    """Which shared store ``url`` and ``prefix`` are, with no credentials or options:
    ``redis://host:6379/0#prefix`` (``unix:///path?db=0#prefix`` for a socket). Replicas
    configured with the same URL and prefix share one store and get the same name."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        db = query.get("db", ["0"])[0]
        return f"unix://{parts.path}?db={db}#{prefix}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:  # redis-py refuses it when the store opens; keep the name readable
        port = 6379
    db = parts.path.strip("/") or query.get("db", ["0"])[0]
    return f"{parts.scheme}://{host}:{port}/{db}#{prefix}"


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
        #: The ``store`` label of the pending gauge: the same on every replica sharing it.
        self.scope = shared_store_name(url, prefix)
        self._max = max_entries
        self._remember_ms = max(int(remember_seconds * 1000), 1)
        self._timeout = timeout_seconds
        self._client: redis.Redis | None = None
        self._put: Any = None
        self._take: Any = None
        self._attach: Any = None
        self._sweep: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

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
        self._put = self._client.register_script(PUT)
        self._take = self._client.register_script(TAKE)
        self._attach = self._client.register_script(ATTACH)
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
        """PUT scripts of CHUNK rows each, in one pipelined round trip."""
        with self._guard("write"):
            pipe = self._redis.pipeline(transaction=False)
            for start in range(0, len(rows), CHUNK):
                args: list[str | int] = [self._prefix, repr(now), self._remember_ms]
                for row in rows[start : start + CHUNK]:
                    args += [
                        row.request_id,
                        row.row,
                        row.model,
                        row.version,
                        repr(row.value),
                        repr(row.time),
                        repr(row.expires),
                    ]
                self._put(args=args, client=pipe)
            pipe.execute()
        return PutResult({})

    def take(self, lookups: Sequence[Lookup], now: float) -> list[TakeResult]:
        """TAKE scripts of CHUNK lookups each, pipelined; each call is atomic on the server."""
        with self._guard("read"):
            pipe = self._redis.pipeline(transaction=False)
            for start in range(0, len(lookups), CHUNK):
                args: list[str | int] = [self._prefix, repr(now), self._remember_ms]
                for lookup in lookups[start : start + CHUNK]:
                    actual = "" if math.isnan(lookup.actual) else repr(lookup.actual)
                    args += [lookup.request_id, lookup.row, lookup.model, actual]
                self._take(args=args, client=pipe)
            replies = [reply for chunk in pipe.execute() for reply in chunk]
        return [_result(lookup, reply) for lookup, reply in zip(lookups, replies, strict=True)]

    def attach(self, rows: Sequence[ShadowRow], now: float) -> AttachResult:
        """ATTACH scripts of CHUNK rows each, pipelined; each call is atomic on the server."""
        with self._guard("write"):
            pipe = self._redis.pipeline(transaction=False)
            for start in range(0, len(rows), CHUNK):
                args: list[str | int] = [self._prefix]
                for row in rows[start : start + CHUNK]:
                    args += [
                        row.request_id,
                        row.row,
                        row.model,
                        row.version,
                        row.shadow_version,
                        repr(row.value),
                    ]
                self._attach(args=args, client=pipe)
            replies = [reply for chunk in pipe.execute() for reply in chunk]
        attached: list[ShadowRow] = []
        labelled: list[tuple[ShadowRow, float]] = []
        orphaned: dict[str, int] = {}
        for row, reply in zip(rows, replies, strict=True):
            if reply == "attached":
                attached.append(row)
            elif reply.startswith("L:"):
                labelled.append((row, float(reply[2:])))
            else:
                orphaned[row.model] = orphaned.get(row.model, 0) + 1
        return AttachResult(attached, labelled, orphaned)

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
        version, value, made, expires, shadow_version, shadow_value = reply[1:7]
        prediction = StoredPrediction(
            lookup.request_id,
            lookup.row,
            lookup.model,
            version,
            float(value),
            float(made),
            float(expires),
            shadow_version,
            float(shadow_value) if shadow_value else math.nan,
        )
        return TakeResult(Found.MATCHED, prediction)
    if kind == "wrong_model":
        return TakeResult(Found.WRONG_MODEL, other_model=reply[1])
    return TakeResult(Found(kind))
