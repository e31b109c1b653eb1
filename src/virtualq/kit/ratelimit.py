"""Rate limits per API key: a token bucket of `burst` tokens refilled at `per_minute` tokens a minute.

With Redis configured the buckets live there (one Lua script per request, Redis's clock), so every server
process draws from the same bucket. Without Redis, or while Redis is unreachable, each process keeps its
own buckets in memory; when Redis comes back the shared buckets are used again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from virtualq.logging import get_logger

log = get_logger("virtualq.ratelimit")

# Returns {allowed (0/1), tokens left as a string}: Redis would truncate a Lua float reply to an integer.
_TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


REDIS_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Policy:
    per_minute: int
    burst: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # until the next request would be allowed (0 when allowed)

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_seconds).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers


def decide(policy: Policy, allowed: bool, tokens: float) -> Decision:
    rate = policy.per_second
    return Decision(
        allowed=allowed,
        limit=policy.burst,
        remaining=max(0, math.floor(tokens)),
        reset_seconds=max(0, math.ceil((policy.burst - tokens) / rate)),
        retry_after=0 if allowed else max(1, math.ceil((1 - tokens) / rate)),
    )


class LocalBuckets:
    """This process's buckets. Full buckets are forgotten by `prune`, so memory follows the active keys."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._pruned = time.monotonic()

    def take(self, key: str, policy: Policy) -> Decision:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(policy.burst), now))
        tokens = min(float(policy.burst), tokens + max(0.0, now - stamp) * policy.per_second)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        if now - self._pruned > 60:
            self.prune(now)
        return decide(policy, allowed, tokens)

    def prune(self, now: float) -> None:
        """Drop buckets idle long enough to have refilled (at most 60 tokens a minute are lost by this)."""
        self._pruned = now
        idle = [key for key, (_, stamp) in self._buckets.items() if now - stamp > 3600]
        for key in idle:
            del self._buckets[key]


class RateLimiter:
    def __init__(self, redis: Any | None) -> None:
        self.redis = redis
        self.local = LocalBuckets()
        self._script: Any = None
        self._failures: tuple[type[Exception], ...] = (OSError,)
        if redis is not None:
            # Imported only with Redis configured: redis-py costs a process ~20 MB (docs/performance.md).
            from redis.exceptions import RedisError

            self._script = redis.register_script(_TAKE_SCRIPT)
            self._failures = (RedisError, OSError)
        self._redis_failing = False
        self._retry_redis_at = 0.0

    async def take(self, key: str, policy: Policy) -> Decision:
        if self._script is not None and time.monotonic() >= self._retry_redis_at:
            try:
                allowed, tokens = await self._script(
                    keys=[f"vq:rl:{key}"], args=[policy.per_second, policy.burst]
                )
            except self._failures as exc:
                if not self._redis_failing:
                    log.warning("rate limits fall back to this process: Redis is unreachable", error=str(exc))
                    self._redis_failing = True
                # Until then this process counts on its own instead of paying a failed call per request.
                self._retry_redis_at = time.monotonic() + REDIS_RETRY_SECONDS
            else:
                if self._redis_failing:
                    log.info("rate limits shared through Redis again")
                    self._redis_failing = False
                return decide(policy, bool(allowed), float(tokens))
        return self.local.take(key, policy)
