"""Idempotency keys (PRODUCT §6): a POST with `Idempotency-Key` does its work once; retries, even 20 at the
same time over real HTTP, get the first answer; another body with the same key is 409; keys belong to one
API key."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from tests.conftest import LiveServer
from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import Tenant, coffee, ok


def with_key(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def count_tickets(db: asyncpg.Connection, queue_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM tickets WHERE queue_id = $1", uuid.UUID(queue_id))
    return count


async def test_a_retry_returns_the_first_answer_without_doing_the_work_again(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    body = {"queue_id": queue, "type_definition_id": order, "custom_data": {"name": "Ada"}}
    first = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "order-1"))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "order-1"))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await count_tickets(db, queue) == 1

    # Without the header, or with another key, the work is done again.
    ok(await client.post("/v1/tickets", json=body, headers=t.h), 201)
    ok(await client.post("/v1/tickets", json=body, headers=with_key(t.h, "order-2")), 201)
    assert await count_tickets(db, queue) == 3


async def test_the_same_key_with_another_request_is_a_conflict(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    body = {"queue_id": queue, "type_definition_id": order}
    ok(await client.post("/v1/tickets", json=body, headers=with_key(t.h, "k")), 201)
    other_body = await client.post(
        "/v1/tickets", json={**body, "custom_data": {"name": "Bob"}}, headers=with_key(t.h, "k")
    )
    assert_error(other_body, 409, "idempotency_conflict")
    other_path = await client.post("/v1/queues", json={"name": "Side"}, headers=with_key(t.h, "k"))
    assert_error(other_path, 409, "idempotency_conflict")
    assert await count_tickets(db, queue) == 1
    assert await db.fetchval("SELECT count(*) FROM queues WHERE tenant_id = $1", uuid.UUID(t.id)) == 1


async def test_a_retry_serialised_another_way_is_the_same_request(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """The body was compared byte for byte: the same JSON with its keys in another order or spaced
    otherwise (another client library, a pretty-printer) was a 409 that nobody could explain. It is now
    compared by its meaning; a different value is still a conflict, and so is 1 against 1.0."""
    t, queue, order = await coffee(client, api)
    compact = f'{{"queue_id":"{queue}","type_definition_id":"{order}","custom_data":{{"name":"Ada","n":1}}}}'
    spread = (
        f'{{\n  "custom_data": {{"n": 1, "name": "Ada"}},\n  "type_definition_id": "{order}",'
        f'\n  "queue_id": "{queue}"\n}}'
    )
    headers = with_key({**t.h, "Content-Type": "application/json"}, "order-7")
    first = await client.post("/v1/tickets", content=compact.encode(), headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/tickets", content=spread.encode(), headers=headers)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    for changed in (compact.replace('"Ada"', '"Bob"'), compact.replace('"n":1', '"n":1.0')):
        assert_error(
            await client.post("/v1/tickets", content=changed.encode(), headers=headers),
            409,
            "idempotency_conflict",
        )
    assert await count_tickets(db, queue) == 1
    # JSON may escape a lone surrogate, which no UTF-8 text holds: compared, not a 500.
    odd = compact.replace('"Ada"', '"\\ud800"').encode()
    for _ in range(2):
        response = await client.post("/v1/tickets", content=odd, headers=with_key(headers, "order-8"))
        assert response.status_code < 500, response.text


async def test_keys_belong_to_the_api_key_that_sent_them(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    other_key = await api.key("tenant", "admin", tenant_id=t.id)
    body = {"queue_id": queue, "type_definition_id": order}
    first = ok(await client.post("/v1/tickets", json=body, headers=with_key(t.h, "shared")), 201)
    second = ok(await client.post("/v1/tickets", json=body, headers=with_key(auth(other_key), "shared")), 201)
    assert first["id"] != second["id"]
    # X-API-Key and Bearer carry the same key, so they share its idempotency keys.
    via_header = await client.post(
        "/v1/tickets", json=body, headers={"X-API-Key": other_key, "Idempotency-Key": "shared"}
    )
    assert via_header.json()["id"] == second["id"]
    assert await count_tickets(db, queue) == 2


async def test_a_failed_request_frees_its_key(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    bad = await client.post(
        "/v1/tickets",
        json={"queue_id": queue, "type_definition_id": order, "ttl_minutes": "x"},
        headers=with_key(t.h, "fix-me"),
    )
    assert_error(bad, 400, "validation_error")
    fixed = await client.post(
        "/v1/tickets", json={"queue_id": queue, "type_definition_id": order}, headers=with_key(t.h, "fix-me")
    )
    assert fixed.status_code == 201, fixed.text
    assert await count_tickets(db, queue) == 1


async def test_a_committed_answer_that_is_not_2xx_is_kept(client: httpx.AsyncClient, api: Api) -> None:
    """call-next on an empty line answers 404 queue_empty; nothing committed, so the key is free again."""
    t, queue, order = await coffee(client, api)
    empty = await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=with_key(t.h, "next-1"))
    assert_error(empty, 404, "queue_empty")
    ticket = await t.ticket(queue, order)
    called = ok(await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=with_key(t.h, "next-1")))
    assert called["id"] == ticket["id"]


async def test_bad_idempotency_keys_are_refused(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    body = {"queue_id": queue, "type_definition_id": order}
    for bad in ("x" * 256, "has space", "tab\tkey", "é", ""):
        headers: dict[str, Any] = {**t.h, "Idempotency-Key": bad.encode("latin-1")}
        response = await client.post("/v1/tickets", json=body, headers=headers)
        assert_error(response, 400, "validation_error")
    unauthenticated = await client.post("/v1/tickets", json=body, headers={"Idempotency-Key": "k"})
    assert_error(unauthenticated, 401, "unauthorized")


async def test_a_replayed_webhook_subscription_does_not_show_its_secret_again(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """The signing secret is shown once, to the admin who subscribes: a retry with the same Idempotency-Key
    gets the subscription without it, and the stored answer does not keep it (as for a new API key)."""
    t = await Tenant.create(client, api)
    body = {"url": "https://hooks.example.com/in"}
    first = ok(await client.post("/v1/webhooks", json=body, headers=with_key(t.h, "wh-1")), 201)
    assert first["secret"].startswith("whsec_")
    again = await client.post("/v1/webhooks", json=body, headers=with_key(t.h, "wh-1"))
    assert again.headers["idempotent-replayed"] == "true"
    assert ok(again, 201)["id"] == first["id"]
    assert again.json()["secret"].startswith("(shown only in the first response")
    stored = await db.fetch("SELECT response_body FROM idempotency_keys WHERE response_body IS NOT NULL")
    assert stored
    assert all(first["secret"].encode() not in bytes(row["response_body"]) for row in stored)


async def test_a_revoked_key_cannot_replay(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    staff = ok(
        await client.post(
            "/v1/api-keys",
            json={"name": "s", "scope": "tenant", "role": "staff", "tenant_id": t.id},
            headers=t.h,
        ),
        201,
    )
    body = {"queue_id": queue, "type_definition_id": order}
    ok(await client.post("/v1/tickets", json=body, headers=with_key(auth(staff["key"]), "r")), 201)
    assert (await client.delete(f"/v1/api-keys/{staff['id']}", headers=t.h)).status_code == 204
    replay = await client.post("/v1/tickets", json=body, headers=with_key(auth(staff["key"]), "r"))
    assert_error(replay, 401, "unauthorized")


async def test_a_key_of_a_deactivated_tenant_cannot_replay(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A stored answer is given only to a caller who may still call: with the tenant deactivated, the retry
    hears 403 (not the stored 201), and no replay header; reactivated, it gets the first answer again."""
    t, queue, order = await coffee(client, api)
    body = {"queue_id": queue, "type_definition_id": order}
    first = ok(await client.post("/v1/tickets", json=body, headers=with_key(t.h, "d")), 201)
    account_admin = auth(t.world.account_admin)
    assert (await client.delete(f"/v1/tenants/{t.id}", headers=account_admin)).status_code == 204
    refused = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "d"))
    assert_error(refused, 403, "forbidden")
    assert "idempotent-replayed" not in refused.headers
    ok(await client.patch(f"/v1/tenants/{t.id}", json={"is_active": True}, headers=account_admin))
    again = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "d"))
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true")
    assert again.json() == first
    assert await count_tickets(db, queue) == 1


async def test_twenty_concurrent_retries_run_once_and_all_get_the_same_answer(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, live_server: LiveServer
) -> None:
    t, queue, order = await coffee(client, api)
    for _ in range(3):
        await t.ticket(queue, order)
    body = {"queue_id": queue, "type_definition_id": order, "custom_data": {"name": "Grace"}}
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        creates = await asyncio.gather(
            *(http.post("/v1/tickets", json=body, headers=with_key(t.h, "burst")) for _ in range(20))
        )
        calls = await asyncio.gather(
            *(
                http.post(f"/v1/queues/{queue}/call-next", json={}, headers=with_key(t.h, "call"))
                for _ in range(20)
            )
        )
    assert {r.status_code for r in creates} == {201}, [r.text for r in creates if r.status_code != 201]
    assert len({r.content for r in creates}) == 1
    assert sum(1 for r in creates if "idempotent-replayed" not in r.headers) == 1
    assert await count_tickets(db, queue) == 4

    assert {r.status_code for r in calls} == {200}, [r.text for r in calls if r.status_code != 200]
    assert len({r.json()["id"] for r in calls}) == 1
    in_service = await db.fetchval(
        "SELECT count(*) FROM tickets WHERE queue_id = $1 AND current_state <> 'received'", uuid.UUID(queue)
    )
    assert in_service == 1
    history = await db.fetchval(
        "SELECT count(*) FROM ticket_history h JOIN tickets t ON t.id = h.ticket_id WHERE t.queue_id = $1",
        uuid.UUID(queue),
    )
    assert history == 4 + 1  # four creations, one call


async def test_claims_left_by_a_dead_request(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, app: Any
) -> None:
    """A claim whose request died before committing may be taken over once its lease lapsed; one whose work
    committed but whose answer was lost is refused rather than done twice; an expired key is free."""
    from virtualq.auth import keys

    t, queue, order = await coffee(client, api)
    owner = keys.hash_key(t.world.tenant_admin)
    body = {"queue_id": queue, "type_definition_id": order}

    async def leave(key: str, state: str, lease: str, expires: str = "1 day") -> None:
        await db.execute(
            f"""INSERT INTO idempotency_keys (owner, key, fingerprint, state, lease_until, expires_at)
                VALUES ($1, $2, '\\x00', $3, now() + interval '{lease}', now() + interval '{expires}')""",
            owner,
            key,
            state,
        )

    await leave("died-before-commit", "running", "-1 second")
    taken = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "died-before-commit"))
    assert taken.status_code == 201, taken.text

    await leave("died-after-commit", "committed", "-1 second")
    lost = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "died-after-commit"))
    assert_error(lost, 409, "idempotency_conflict")

    await leave("expired", "completed", "-2 days", expires="-1 second")
    fresh = await client.post("/v1/tickets", json=body, headers=with_key(t.h, "expired"))
    assert fresh.status_code == 201, fresh.text
    assert await count_tickets(db, queue) == 2

    await db.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE owner = $1", owner
    )
    from virtualq import sweeper

    await sweeper.prune(app.state.pool, retention_days=7)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE owner = $1", owner) == 0


async def test_a_corrected_retry_waits_for_the_refused_first_request_to_free_its_key(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A refused request (400) frees its key only after its answer has left, so a client correcting its body
    and retrying at once could find the key still held under the first body and hear 409. A request with
    another body now waits while the key's first request runs: once that one frees the key, it runs; once it
    completes, it is the 409."""
    from virtualq.auth import keys

    t, queue, order = await coffee(client, api)
    owner = keys.hash_key(t.world.tenant_admin)
    body = {"queue_id": queue, "type_definition_id": order}

    async def hold(key: str) -> None:  # as the first request holds its key while it runs
        await db.execute(
            """INSERT INTO idempotency_keys (owner, key, fingerprint, state, lease_until, expires_at)
               VALUES ($1, $2, '\\x00', 'running', now() + interval '1 minute', now() + interval '1 day')""",
            owner,
            key,
        )

    async def then(seconds: float, sql: str, key: str) -> None:
        await asyncio.sleep(seconds)
        await db.execute(sql, owner, key)

    await hold("fixed-body")
    retry = asyncio.create_task(client.post("/v1/tickets", json=body, headers=with_key(t.h, "fixed-body")))
    await then(0.3, "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2", "fixed-body")
    assert (await retry).status_code == 201, (await retry).text
    assert await count_tickets(db, queue) == 1

    await hold("other-body")
    other = asyncio.create_task(client.post("/v1/tickets", json=body, headers=with_key(t.h, "other-body")))
    await then(
        0.3,
        """UPDATE idempotency_keys SET state = 'completed', response_status = 201, response_headers = '{}',
                  response_body = '{}' WHERE owner = $1 AND key = $2""",
        "other-body",
    )
    assert_error(await other, 409, "idempotency_conflict")
    assert await count_tickets(db, queue) == 1


async def test_other_methods_ignore_the_header(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    for _ in range(2):
        response = await client.patch(
            f"/v1/tickets/{ticket['id']}", json={"custom_data": {"name": "Z"}}, headers=with_key(t.h, "p")
        )
        assert response.status_code == 200, response.text
        assert "idempotent-replayed" not in response.headers
