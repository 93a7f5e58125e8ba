"""ClickHouse as the analytics event store of ``POST /workspaces`` (UNTESTED: no ClickHouse server here).

Used instead of the PostgreSQL ``analytics`` database when ``REFPLAT_CLICKHOUSE_URL``
is set (for example ``http://default:pw@127.0.0.1:8123/analytics``); needs the
optional package ``clickhouse-connect`` (``pip install 'clickhouse-connect>=0.7,<1'``).

ClickHouse has no ``PREPARE TRANSACTION``, so it cannot be a two-phase
participant.  It is written last, once auth and backend are prepared: if the
insert fails, the prepared steps are rolled back; if a ``COMMIT PREPARED``
fails after the insert, the event is deleted again (a compensation).  The
table uses the same columns as the PostgreSQL ``events`` table, so the
cross-store check reads both alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

CLICKHOUSE_URL_ENV = "REFPLAT_CLICKHOUSE_URL"
DDL = """
CREATE TABLE IF NOT EXISTS events (
    event_id UUID, user_id UUID, kind String, workspace_id Nullable(UUID), payload String,
    created_at DateTime64(3) DEFAULT now64(3)
) ENGINE = MergeTree ORDER BY (user_id, kind, event_id)
"""


class ClickHouseEvents:
    def __init__(self, url: str):
        self.url = url
        self.client = None

    @classmethod
    def from_environment(cls) -> ClickHouseEvents | None:
        url = os.environ.get(CLICKHOUSE_URL_ENV)
        return cls(url) if url else None

    async def start(self) -> None:
        try:
            import clickhouse_connect
        except ImportError:
            raise RuntimeError(
                f"{CLICKHOUSE_URL_ENV} is set but clickhouse-connect is not installed: "
                "pip install 'clickhouse-connect>=0.7,<1' or unset the variable"
            ) from None
        self.client = await asyncio.to_thread(clickhouse_connect.get_client, dsn=self.url)
        await asyncio.to_thread(self.client.command, DDL)

    async def insert(self, user_id: uuid.UUID, workspace_id: uuid.UUID, name: str) -> None:
        row = [uuid.uuid4(), user_id, "workspace_created", workspace_id, json.dumps({"name": name})]
        await asyncio.to_thread(
            self.client.insert,
            "events",
            [row],
            column_names=["event_id", "user_id", "kind", "workspace_id", "payload"],
        )

    async def compensate(self, workspace_id: uuid.UUID) -> None:
        await asyncio.to_thread(
            self.client.command,
            "DELETE FROM events WHERE workspace_id = {ws:UUID}",
            parameters={"ws": workspace_id},
        )

    async def close(self) -> None:
        if self.client is not None:
            await asyncio.to_thread(self.client.close)
