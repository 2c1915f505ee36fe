"""`ServingEngines`: the engines that serve, as the rollout side knows them, and requests that wait for one.

The driver's engine monitor takes a dead or hung engine out and puts it back once restarted and synced
(orchestration/engine_health.py); it tells the rollout side every change (`update`). A request that
fails while the serving set changes (its engine went down) or while no engine serves (a lone engine is
being restarted) is not the sample's failure: `generate_group` waits until an engine serves and sends it
again, from the sample's own tokens. A request that fails while the same engines keep serving is an
engine failure as before (its group is recycled and counted against the step's cap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from slime_rl.engines.client import EngineClient

logger = logging.getLogger(__name__)


class ServingEngines:
    """The serving engines' clients (`clients`, used to abort them and read their loads) and their changes."""

    def __init__(self, clients: Sequence[EngineClient]) -> None:
        self.clients = list(clients)
        self.epoch = 0  # incremented at every change of the serving set
        self._serving = asyncio.Event()  # binds to the event loop that first waits on it
        if self.clients:
            self._serving.set()

    async def update(self, clients: Sequence[EngineClient]) -> None:
        """Replace the serving set (closing the old clients)."""
        old, self.clients = self.clients, list(clients)
        self.epoch += 1
        if self.clients:
            self._serving.set()
        else:
            self._serving.clear()
        await asyncio.gather(*(client.aclose() for client in old))

    def changed_since(self, epoch: int) -> bool:
        """Whether an engine went down or came back since `epoch`, or none serves now."""
        return self.epoch != epoch or not self.clients

    async def wait_serving(self) -> None:
        """Return once at least one engine serves."""
        await self._serving.wait()
