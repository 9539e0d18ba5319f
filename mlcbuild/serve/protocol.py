"""uvicorn's HTTP/1.1 protocol with a deadline on what a client sends (slowloris).

uvicorn times out idle keep-alive connections but not a request head or body that trickles in:
250 connections sending a byte now and then were held for minutes. Here a connection whose request
has not fully arrived `timeout` seconds after it opened (or after its last response) is closed; a
request that has arrived is never cut, however long its answer streams.
"""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_TIMEOUT = 15.0


class DeadlineProtocol(H11Protocol):
    timeout: float = DEFAULT_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        arrived = self.cycle is not None and not self.cycle.response_complete and not self.cycle.more_body
        if arrived:
            self._arm()
        elif not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Any) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        super().connection_lost(exc)


def with_timeout(seconds: float) -> type[DeadlineProtocol]:
    return type("DeadlineProtocol", (DeadlineProtocol,), {"timeout": seconds})
