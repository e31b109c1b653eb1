from __future__ import annotations

import httpx

from tests.helpers import Api, assert_error, auth


async def test_admin_creates_and_lists_an_account(client: httpx.AsyncClient, api: Api) -> None:
    account = await api.account("Smoke Coffee")
    response = await client.get(f"/v1/accounts/{account['id']}", headers=auth(api.admin_key))
    assert response.status_code == 200
    assert response.json()["name"] == "Smoke Coffee"


async def test_missing_key_is_401(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/accounts"), 401, "unauthorized")
