"""Network shaping shared by the stand-ins: what a real link adds that loopback does not.

``Shaping`` holds a round-trip time added to every request, a bandwidth that uploads, stdin
writes and streamed output are paced to, and a byte count after which one output stream per
stand-in drops mid-session (each stand-in drops it the way its service does). Off by default,
so the suites keep their speed; ``RLM_STANDIN_SHAPING`` turns it on for a whole run, e.g.
``RLM_STANDIN_SHAPING="rtt=0.08,bandwidth=4e6,drop=200000,throttle=7"``.

Sources for the figures the issue asks to emulate: an 80 ms RTT is a transatlantic round trip
to a provider's region; 4 MB/s is what Daytona's bash labellers sustain (the daemon's
``session/execute.go`` reads pipes a byte at a time); stream drops are what E2B's SDK does not
survive and Prime's re-attaches without replay (see each stand-in's drop option); Modal's
command router throttles with RESOURCE_EXHAUSTED carrying an RPCRetryPolicy, which its SDK
waits out (``modal/sandbox/_task_command_router_client.py``, SDK 1.6.4).

Throttling (``throttle=N``: every Nth throttleable request is refused) is answered the way each
service documents it: Modal with gRPC ``RESOURCE_EXHAUSTED`` carrying an ``RPCRetryPolicy``
(control plane and command router); E2B, Daytona and Prime with HTTP 429 and a ``Retry-After``
header (E2B: https://e2b.dev/docs/sandbox/rate-limits, its SDK's ``e2b/retry.py`` reads
``Retry-After``; Daytona: https://www.daytona.io/docs/en/rate-limits, its SDK maps 429 to
``DaytonaRateLimitError`` with the response headers; Prime publishes no rate-limit page, so its
429 follows the HTTP convention). Each stand-in says which of its endpoints can be throttled:
the control plane, file uploads and process starts, not the long-lived streams.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENV_VAR = "RLM_STANDIN_SHAPING"


@dataclass(frozen=True)
class Shaping:
    #: seconds added to every request (one round trip)
    rtt: float = 0.0
    #: bytes a second for request bodies, stdin writes and streamed output (None: unlimited)
    bandwidth: float | None = None
    #: output bytes after which one stream per stand-in drops (None: never)
    drop_after: int | None = None
    #: every Nth throttleable request is refused with a retry-after, as the stand-in's service
    #: does (Modal: RESOURCE_EXHAUSTED with an RPCRetryPolicy; the others: HTTP 429 with a
    #: Retry-After header); None: never
    throttle_every: int | None = None
    #: the retry-after a throttled request names, in seconds (HTTP: rounded up to whole seconds)
    retry_after: float = 0.2
    #: when the shaped link is next free (one link per stand-in: concurrent transfers share it)
    _link: list[float] = field(default_factory=lambda: [0.0], compare=False, repr=False)
    _count: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Shaping:
        """``"rtt=0.08,bandwidth=4e6,drop=200000"`` (any subset; empty: no shaping)."""
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, _, value = item.partition("=")
            if key == "rtt":
                values["rtt"] = float(value)
            elif key == "bandwidth":
                values["bandwidth"] = float(value)
            elif key == "drop":
                values["drop_after"] = int(float(value))
            elif key == "throttle":
                values["throttle_every"] = int(value)
            elif key == "retry_after":
                values["retry_after"] = float(value)
            else:
                raise ValueError(
                    f"{ENV_VAR}: unknown key {key!r} (rtt, bandwidth, drop, throttle, retry_after)"
                )
        return cls(**values)

    @classmethod
    def from_env(cls) -> Shaping:
        return cls.parse(os.environ.get(ENV_VAR, ""))

    @property
    def active(self) -> bool:
        return bool(
            self.rtt
            or self.bandwidth
            or self.drop_after is not None
            or self.throttle_every is not None
        )

    def throttled(self) -> bool:
        """True for every ``throttle_every``-th call (counted per stand-in)."""
        if not self.throttle_every:
            return False
        self._count[0] += 1
        return self._count[0] % self.throttle_every == 0

    async def round_trip(self) -> None:
        if self.rtt:
            await asyncio.sleep(self.rtt)

    async def carry(self, size: int) -> None:
        """Waits until ``size`` bytes have crossed the shaped link, which concurrent transfers
        share (parts uploaded in parallel do not multiply the bandwidth)."""
        if self.bandwidth and size:
            now = time.monotonic()
            done = max(now, self._link[0]) + size / self.bandwidth
            self._link[0] = done
            await asyncio.sleep(done - now)

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` as HTTP sends it: whole seconds (RFC 9110 delta-seconds)."""
        return str(max(0, math.ceil(self.retry_after)))

    def aiohttp_middleware(
        self,
        throttleable: Callable[[Any], bool] = lambda request: False,
        throttled_body: dict[str, Any] | None = None,
        on_throttle: Callable[[Any], None] = lambda request: None,
    ) -> Any:
        """An aiohttp middleware adding the round trip and pacing request bodies; a request
        ``throttleable(request)`` accepts counts towards the throttling and, when its turn
        comes, is answered 429 with ``Retry-After`` and ``throttled_body`` (the service's error
        JSON) before its handler runs (so nothing is done twice when it is repeated)."""
        from aiohttp import web

        @web.middleware
        async def shape(request: web.Request, handler: Any) -> Any:
            await self.round_trip()
            if throttleable(request) and self.throttled():
                on_throttle(request)
                return web.json_response(
                    throttled_body or {"message": "rate limit exceeded"},
                    status=429,
                    headers={"Retry-After": self.retry_after_header},
                )
            await self.carry(request.content_length or 0)
            return await handler(request)

        return shape
