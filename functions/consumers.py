"""The dashboard websocket: staff only; a snapshot on connect, then the dispatcher's updates."""

from __future__ import annotations

import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from functions import dashboard
from functions.taskstore import store_for

SNAPSHOT_MIN_INTERVAL = 2.0  # seconds between snapshots one page may ask for


def is_staff(user) -> bool:
    return user is not None and user.is_authenticated and user.is_active and user.is_staff


@database_sync_to_async
def build_snapshot() -> dict:
    return dashboard.snapshot(store_for(settings.REDIS_URL))


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """A thin adapter: coalescing happens in the dispatcher's publisher."""

    last_snapshot = 0.0  # the group is joined by hand in connect(), once the user is known to be staff

    async def connect(self) -> None:
        if not is_staff(self.scope.get("user")):
            await self.close()  # before accept(): the handshake is refused with 403
            return
        await self.channel_layer.group_add(dashboard.DASHBOARD_GROUP, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code) -> None:
        await self.channel_layer.group_discard(dashboard.DASHBOARD_GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        """A page that heard nothing for a while (no dispatcher running) asks for a fresh snapshot."""
        wants = isinstance(content, dict) and content.get("type") == "snapshot"
        if wants and time.monotonic() - self.last_snapshot >= SNAPSHOT_MIN_INTERVAL:
            await self.send_snapshot()

    async def send_snapshot(self) -> None:
        self.last_snapshot = time.monotonic()
        await self.send_json(await build_snapshot())

    async def dashboard_update(self, event: dict) -> None:
        await self.send_json(event)
