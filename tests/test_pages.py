"""The three pages in headless Chromium (Debian's `chromium`, driven by Playwright): live updates without
reload, recovery after a server restart, the console's buttons, the customer's page, privacy, accessibility.

Set SCREENSHOT_DIR to keep screenshots of the pages (the ones in docs/ were made that way).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import LiveServer
from tests.helpers import Api, auth
from tests.test_ticket_flows import Tenant, ok
from virtualq.demo import DRINK_FSM, ORDER_FSM

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAST = 1000  # ms: "within a second"
SHOTS = os.environ.get("SCREENSHOT_DIR")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert os.path.exists(CHROMIUM), (  # noqa: ASYNC240 - once, before the browser starts
        "Debian's chromium is needed: apt-get install chromium (scripts/test does)"
    )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 800})
    opened = await context.new_page()
    yield opened
    await context.close()


class Shop:
    def __init__(self, t: Tenant, queue: dict[str, Any], order: dict[str, Any], keys: dict[str, str]) -> None:
        self.t, self.queue, self.order, self.keys = t, queue, order, keys

    async def ticket(self, **fields: Any) -> dict[str, Any]:
        return await self.t.ticket(self.queue["id"], self.order["id"], **fields)


async def shop(client: httpx.AsyncClient, api: Api) -> Shop:
    t = await Tenant.create(client, api)
    drink = await t.type("drink", DRINK_FSM)
    order = await t.type("food_order", ORDER_FSM, item_definition_ids=[drink["id"]])
    queue = await t.queue("Main counter", ticket_prefix="C")
    keys = {
        role: await api.key("tenant", role, key=t.world.tenant_admin, tenant_id=t.id)
        for role in ("staff", "display")
    }
    return Shop(t, queue, order, keys)


async def person(shop: Shop, fname: str, lname: str, email: str, phone: str) -> dict[str, Any]:
    body = {"fname": fname, "lname": lname, "email": email, "phone": phone}
    return ok(await shop.t.client.post("/v1/customers", json=body, headers=shop.t.h), 201)


async def no_serious_violations(page: Page) -> None:
    results = await Axe().run(page)
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in serious]


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))  # playwright creates the folder


async def test_wall_display_follows_the_line_live_and_shows_no_personal_data(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    john = await person(s, "John", "Smithson", "john.smithson@example.com", "+1 206 555 0199")
    first = await s.ticket(customer_id=john["id"])
    bodies: list[str] = []

    async def keep(response: Any) -> None:
        if "/v1/" in response.url and "stream" not in response.url:
            bodies.append(await response.text())

    page.on("response", keep)
    await page.goto(f"{live_server.url}/display/queues/{s.queue['id']}#key={s.keys['display']}")
    waiting = page.locator(".column.waiting")
    await expect(waiting.locator(f"[data-code='{first['display_code']}']")).to_contain_text(
        "John S.", timeout=5000
    )
    assert "#key" not in page.url  # the key left the address bar
    await no_serious_violations(page)

    second = await s.ticket()
    code = second["display_code"]
    await expect(waiting.locator(f"[data-code='{code}']")).to_be_visible(timeout=FAST)
    await s.t.move(second["id"], "start")
    await expect(page.locator(f".column.in_service [data-code='{code}']")).to_be_visible(timeout=FAST)
    await expect(waiting.locator(f"[data-code='{code}']")).to_have_count(0, timeout=FAST)
    await expect(page.locator("#calling")).to_contain_text(code, timeout=FAST)
    await expect(page.locator("#announcer")).to_contain_text(code, timeout=FAST)
    await s.t.move(second["id"], "mark_ready")
    await expect(page.locator(f".column.ready [data-code='{code}']")).to_be_visible(timeout=FAST)
    await shot(page, "display")
    await s.t.move(second["id"], "pick_up")
    await expect(page.locator(f"[data-code='{code}']")).to_have_count(0, timeout=FAST)

    text = await page.content() + "".join(bodies)
    for secret in ("Smithson", "john.smithson@example.com", "555 0199", john["id"], s.keys["staff"]):
        assert secret not in text


async def test_wall_display_with_a_refused_key_says_so_and_stops_asking(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    """A wrong key: the page says the key was refused and how to open it again (not "Reconnecting…", as
    for a server that is down), and the event stream is not asked again with the same key."""
    s = await shop(client, api)
    streams: list[str] = []
    page.on(
        "request", lambda request: streams.append(request.url) if "/events/stream" in request.url else None
    )
    await page.goto(f"{live_server.url}/display/queues/{s.queue['id']}#key=vq_{'w' * 43}")
    status = page.locator("#status")
    await expect(status).to_contain_text("This key was refused", timeout=5000)
    await expect(status).to_contain_text("#key=vq_")
    await asyncio.sleep(1.5)  # a retrying stream would have asked again by now (after 250 ms, 500 ms, ...)
    await expect(status).to_contain_text("This key was refused")
    assert len(streams) == 1, streams


async def test_wall_display_comes_back_once_its_key_is_accepted_again(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    """A refusal can end (a deactivated tenant reactivated): the display asks again a minute later, and then
    shows the line and drops the message. The page's clock is moved on instead of waiting the minute."""
    s = await shop(client, api)
    account = auth(s.t.world.account_admin)
    assert (await client.delete(f"/v1/tenants/{s.t.id}", headers=account)).status_code == 204
    await page.clock.install()
    await page.goto(f"{live_server.url}/display/queues/{s.queue['id']}#key={s.keys['display']}")
    status = page.locator("#status")
    await expect(status).to_contain_text(
        "This key was refused: the account, tenant or employee", timeout=5000
    )
    ok(await client.patch(f"/v1/tenants/{s.t.id}", json={"is_active": True}, headers=account))
    await asyncio.sleep(1.5)  # every process forgets the cached key within a second
    await page.clock.fast_forward(61_000)
    await expect(page.locator("#queues h2")).to_have_text("Main counter", timeout=5000)
    await expect(status).to_have_text("")


async def test_api_docs_render_without_the_internet(live_server: LiveServer, page: Page) -> None:
    """/docs loads Swagger UI from the server itself (this machine's browser has no internet, as many
    deployments' operators have none): every operation is listed, and nothing is asked of another host."""
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    await page.goto(f"{live_server.url}/docs")
    await expect(page.locator(".opblock").first).to_be_visible(timeout=5000)
    document = await page.evaluate("fetch('/openapi.json').then((response) => response.json())")
    # Swagger UI shows an operation once under each of its tags.
    shown = sum(len(op.get("tags", [])) or 1 for item in document["paths"].values() for op in item.values())
    assert shown > 50
    await expect(page.locator(".opblock")).to_have_count(shown)
    assert [url for url in asked if not url.startswith(live_server.url)] == []
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        css = await http.get("/docs/swagger-ui.css")
        assert (css.status_code, css.headers["content-type"].split(";")[0]) == (200, "text/css")
        assert (await http.get("/docs/index.html")).status_code == 404  # only the two files Swagger UI needs


async def test_wall_display_recovers_after_a_server_restart(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    await page.goto(f"{live_server.url}/display/queues/{s.queue['id']}#key={s.keys['display']}")
    await expect(page.locator("#queues h2")).to_have_text("Main counter", timeout=5000)
    await live_server.stop()
    missed = await s.ticket()  # committed while the display's server is down
    await asyncio.sleep(0.5)
    await live_server.start()
    await expect(page.locator(f"[data-code='{missed['display_code']}']")).to_be_visible(timeout=8000)
    later = await s.ticket()
    await expect(page.locator(f"[data-code='{later['display_code']}']")).to_be_visible(timeout=FAST)


async def test_several_queues_side_by_side(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    other = await s.t.queue("Pickup", ticket_prefix="P")
    await s.t.ticket(other["id"], s.order["id"])
    await page.goto(
        f"{live_server.url}/display/queues/{s.queue['id']}?queues={other['id']}#key={s.keys['display']}"
    )
    await expect(page.locator("#queues h2")).to_have_text(["Main counter", "Pickup"], timeout=5000)
    await expect(page.locator("[data-code='P001']")).to_be_visible(timeout=FAST)


async def test_a_ticket_forwarded_away_leaves_the_display_and_a_closed_queue_keeps_its_line(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    """A forward is filed under the queue the ticket joined: the display of the queue it left must drop it
    at once all the same. Closing the queue keeps the line on the wall (those tickets are still served)."""
    s = await shop(client, api)
    elsewhere = await s.t.queue("Elsewhere", ticket_prefix="E")
    leaving, staying = await s.ticket(), await s.ticket()
    await page.goto(f"{live_server.url}/display/queues/{s.queue['id']}#key={s.keys['display']}")
    waiting = page.locator(".column.waiting")
    await expect(waiting.locator(f"[data-code='{leaving['display_code']}']")).to_be_visible(timeout=5000)
    ok(
        await client.post(
            f"/v1/tickets/{leaving['id']}/forward", json={"target_queue_id": elsewhere["id"]}, headers=s.t.h
        )
    )
    await expect(waiting.locator(f"[data-code='{leaving['display_code']}']")).to_have_count(0, timeout=FAST)
    ok(await client.post(f"/v1/queues/{s.queue['id']}/disable", headers=s.t.h))
    await expect(page.locator("#queues h2")).to_contain_text("closed to new tickets", timeout=FAST)
    await expect(waiting.locator(f"[data-code='{staying['display_code']}']")).to_be_visible(timeout=FAST)


async def test_staff_console_buttons_make_the_calls(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    a, b, c = [await s.ticket() for _ in range(3)]
    await page.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
    rows = page.locator("#line tr")
    await expect(rows).to_have_count(3, timeout=5000)
    await no_serious_violations(page)

    await page.get_by_role("button", name="Call next").click()
    await expect(page.locator(f"tr[data-code='{a['display_code']}'] .state")).to_have_text(
        "preparing", timeout=FAST
    )
    assert (await s.t.get(f"/v1/tickets/{a['id']}"))["current_state"] == "preparing"

    await page.locator(f"tr[data-code='{a['display_code']}'] button[data-transition='mark_ready']").click()
    await expect(page.locator(f"tr[data-code='{a['display_code']}'] .state")).to_have_text(
        "ready", timeout=FAST
    )

    await page.get_by_role("button", name=f"Move {c['display_code']} up").click()
    await expect(page.locator("#line tr th")).to_have_text(
        [c["display_code"], b["display_code"], a["display_code"]], timeout=FAST
    )
    await shot(page, "console")

    await page.locator(f"tr[data-code='{b['display_code']}'] button.cancel").click()
    await expect(page.locator(f"tr[data-code='{b['display_code']}']")).to_have_count(0, timeout=FAST)
    assert (await s.t.get(f"/v1/tickets/{b['id']}"))["state_category"] == "cancelled"

    # Only the actions the state machine allows: "ready" has no way to a cancelled state, so no cancel.
    await expect(page.locator(f"tr[data-code='{a['display_code']}'] button.cancel")).to_have_count(0)
    await expect(page.locator(f"tr[data-code='{c['display_code']}'] button.cancel")).to_have_count(1)

    # The line also follows changes made elsewhere.
    d = await s.ticket()
    await expect(page.locator(f"tr[data-code='{d['display_code']}']")).to_be_visible(timeout=FAST)

    # A refused action is shown plainly, and says whom a call called.
    await page.get_by_role("button", name="Call next").click()
    await expect(page.locator("#message")).to_have_text(f"Called {c['display_code']}", timeout=FAST)
    await s.t.move(d["id"], "start")
    await expect(page.locator(f"tr[data-code='{d['display_code']}'] .state")).to_have_text(
        "preparing", timeout=FAST
    )
    await page.get_by_role("button", name="Call next").click()
    await expect(page.locator("#message")).to_have_text("nobody is waiting in this queue", timeout=FAST)
    await expect(page.locator("#message")).to_have_class("error")


async def test_a_call_from_a_counter_tells_the_wall_and_the_customer_where_to_go(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, browser: Browser
) -> None:
    """The wall said "Now calling C001" and nobody knew where to go. The console keeps its counter ("Desk 2",
    per browser) and sends it with each call; the wall shows and announces it, the customer's page says it."""
    s = await shop(client, api)
    first, second = await s.ticket(), await s.ticket()
    context = await browser.new_context(viewport={"width": 1400, "height": 800})
    try:
        console, wall, phone = [await context.new_page() for _ in range(3)]
        await wall.goto(f"{live_server.url}/display/queues/{s.queue['id']}#key={s.keys['display']}")
        await phone.goto(live_server.url + first["customer_page"])
        await console.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
        await expect(console.locator("#line tr")).to_have_count(2, timeout=5000)
        await console.get_by_label("Counter").fill("Desk 2")
        await console.get_by_label("Counter").press("Tab")  # saved for this browser
        await console.get_by_role("button", name="Call next").click()
        code = first["display_code"]
        await expect(console.locator("#message")).to_have_text(f"Called {code} to Desk 2", timeout=FAST)
        await expect(console.locator(f"tr[data-code='{code}'] .state")).to_have_text(
            "preparing · Desk 2", timeout=FAST
        )
        await expect(wall.locator(f"#calling li[data-code='{code}']")).to_have_text(
            f"{code} → Desk 2", timeout=FAST
        )
        await expect(wall.locator("#announcer")).to_contain_text(f"Now calling {code}, please go to Desk 2")
        await expect(wall.locator(f".column.in_service [data-code='{code}'] .counter")).to_have_text(
            "→ Desk 2"
        )
        await expect(phone.locator("#turn")).to_have_text(
            "It's your turn! Please go to Desk 2.", timeout=FAST
        )
        assert (await s.t.get(f"/v1/tickets/{first['id']}"))["counter"] == "Desk 2"
        await no_serious_violations(console)

        # The customer has not come: "recall" calls them again, on the wall and on their own page.
        await wall.evaluate("document.getElementById('announcer').textContent = ''")
        await expect(
            console.locator(f"tr[data-code='{second['display_code']}'] button.recall")
        ).to_have_count(0)
        await console.locator(f"tr[data-code='{code}'] button.recall").click()
        await expect(console.locator("#message")).to_have_text(f"Recalled {code}", timeout=FAST)
        await expect(wall.locator("#announcer")).to_contain_text(
            f"Now calling {code}, please go to Desk 2", timeout=FAST
        )
        await expect(wall.locator("#calling li").first).to_have_attribute("data-code", code)
        await expect(phone.locator("#turn")).to_have_text(
            "You are being called again! It's your turn! Please go to Desk 2.", timeout=FAST
        )
        assert (await s.t.get("/v1/events", type="ticket.recalled"))["data"][0]["ticket_id"] == first["id"]
        # Once the ticket moves on, the page no longer says it was called again.
        await s.t.move(first["id"], "mark_ready")
        await expect(phone.locator("#turn")).to_have_text(
            "It's ready — it's your turn! Please go to Desk 2.", timeout=FAST
        )

        # The counter stays with this browser: a console opened again calls to it too.
        again = await context.new_page()
        await again.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
        await expect(again.get_by_label("Counter")).to_have_value("Desk 2", timeout=5000)
    finally:
        await context.close()
    assert (await s.t.get(f"/v1/tickets/{second['id']}"))["counter"] is None  # still in line


async def test_console_keeps_a_half_made_choice_and_the_focus_through_live_updates(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    """Every change in the queue redraws the line: it reset a chosen employee to "nobody" and sent the
    keyboard focus to the page's start, so in a busy queue staff could not finish an assign."""
    s = await shop(client, api)
    ben = ok(
        await client.post(
            "/v1/employees",
            json={"fname": "Ben", "lname": "Okafor", "email": "ben@example.com"},
            headers=s.t.h,
        ),
        201,
    )
    first = await s.ticket()
    await page.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
    row = page.locator(f"tr[data-code='{first['display_code']}']")
    await expect(row).to_be_visible(timeout=5000)
    assign = row.get_by_label(f"Assign {first['display_code']} to")
    await assign.focus()  # as a click that opens the list does
    await assign.select_option(label="Ben Okafor")
    arrived = await s.ticket()  # a live update while the choice is half made
    await page.keyboard.press("Tab")  # on to the "assign" button: the redraw happens now
    newcomer = page.locator(f"tr[data-code='{arrived['display_code']}']")
    await expect(newcomer).to_be_visible(timeout=FAST)
    await expect(row.get_by_label(f"Assign {first['display_code']} to")).to_have_value(ben["id"])
    assert await page.evaluate("document.activeElement.dataset.focus") == "assign"
    await page.keyboard.press("Enter")
    await expect(page.locator("#message")).to_have_text(f"Assigned {first['display_code']}", timeout=FAST)
    assert (await s.t.get(f"/v1/tickets/{first['id']}"))["employee_id"] == ben["id"]

    # Keyboard use: after an action the focus stays on the row's control, not the page's start.
    await row.locator("button[data-transition='start']").focus()
    await page.keyboard.press("Enter")
    await expect(row.locator(".state")).to_have_text("preparing", timeout=FAST)
    assert await page.evaluate("document.activeElement.closest('tr')?.dataset.code") == first["display_code"]


async def test_console_says_when_it_is_offline_and_a_refused_key_leads_back_to_the_key_form(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    await s.ticket()
    await page.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
    await expect(page.locator("#line tr")).to_have_count(1, timeout=5000)
    offline = page.locator("#offline")
    await expect(offline).to_be_hidden()
    await live_server.stop()
    await expect(offline).to_be_visible(timeout=5000)
    await live_server.start()
    await expect(offline).to_be_hidden(timeout=8000)

    # A wrong key, and a display key (which may not act): the key form again, saying why.
    for wrong in (f"vq_{'w' * 43}", s.keys["display"]):
        await page.goto("about:blank")  # a new load (a change of the fragment alone loads nothing)
        await page.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={wrong}")
        await expect(page.locator("#refused")).to_contain_text("This key was refused", timeout=5000)
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#console")).to_be_hidden()
    await page.locator("#key").fill(s.keys["staff"])
    await page.get_by_role("button", name="Open").click()
    await expect(page.locator("#line tr")).to_have_count(1, timeout=5000)


async def test_console_on_a_phone_scrolls_the_table_not_the_page(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, browser: Browser
) -> None:
    s = await shop(client, api)
    await s.ticket()
    context = await browser.new_context(viewport={"width": 375, "height": 667})
    try:
        phone = await context.new_page()
        await phone.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
        await expect(phone.locator("#line tr")).to_have_count(1, timeout=5000)
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 375
    finally:
        await context.close()


async def test_a_long_line_fits_the_wall_and_now_calling_lists_each_call_once(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, browser: Browser
) -> None:
    s = await shop(client, api)
    other = await s.t.queue("Pickup", ticket_prefix="P")
    tickets = [await s.ticket() for _ in range(30)]
    await s.t.ticket(other["id"], s.order["id"])
    context = await browser.new_context(viewport={"width": 1920, "height": 1080})
    try:
        wall = await context.new_page()
        await wall.goto(
            f"{live_server.url}/display/queues/{s.queue['id']}?queues={other['id']}#key={s.keys['display']}"
        )
        await expect(wall.locator(".column.waiting").first.locator("li.more")).to_have_text(
            "+ 22 more", timeout=5000
        )
        await expect(wall.locator(".column.waiting").first.locator("li.ticket")).to_have_count(8)
        assert await wall.evaluate("document.documentElement.scrollHeight") <= 1080  # both queues on the wall
        await expect(wall.locator("[data-code='P001']")).to_be_in_viewport()
        await shot(wall, "display-long-line")

        a, b = tickets[0], tickets[1]
        await s.t.move(a["id"], "start")
        await s.t.move(b["id"], "start")
        await s.t.move(a["id"], "mark_ready")  # called, then ready: once in the strip, at the front
        await expect(wall.locator("#calling li")).to_have_text(
            [a["display_code"], b["display_code"]], timeout=FAST
        )
        await s.t.move(a["id"], "pick_up")  # served: it leaves the strip
        await expect(wall.locator("#calling li")).to_have_text([b["display_code"]], timeout=FAST)
    finally:
        await context.close()


async def test_customer_page_recovers_from_a_failed_first_load_and_words_long_waits(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    """A page whose first load failed (a tunnel, a flaky network) showed the error for ever, and never
    learnt that its number was called."""
    t = await Tenant.create(client, api)
    order = await t.type("food_order", ORDER_FSM)
    queue = await t.queue("Slow", ticket_prefix="S", wait_estimation_method="manual", manual_wait_minutes=45)
    await t.ticket(queue["id"], order["id"])
    mine = await t.ticket(queue["id"], order["id"])
    failed: list[str] = []

    async def fail_once(route: Any) -> None:
        if not failed:
            failed.append(route.request.url)
            await route.abort()
        else:
            await route.continue_()

    await page.route("**/v1/public/tickets/*", fail_once)
    await page.goto(live_server.url + mine["customer_page"])
    await expect(page.locator("#status")).to_contain_text("trying again", timeout=5000)
    await expect(page.locator("#code")).to_have_text(mine["display_code"], timeout=5000)
    assert failed
    await expect(page.locator("#place")).to_have_text("Number 2 in line · about 1 h 30 min", timeout=FAST)
    await expect(page.locator("#status")).to_have_text("")
    await client.post(f"/v1/queues/{queue['id']}/call-next", json={}, headers=t.h)
    await expect(page.locator("#place")).to_have_text("You are next · about 45 min", timeout=FAST)

    # A link cut short (in a text message, say): the page, saying so, not a JSON error.
    await page.goto(f"{live_server.url}/t/{mine['id'][:20]}?token=abc")
    await expect(page.locator("#status")).to_have_text("This ticket link is not valid.", timeout=5000)


async def test_customer_page_shows_the_moment_it_is_their_turn(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    ahead = await s.ticket()
    mine = await s.ticket()
    link = mine["customer_page"]
    assert re.fullmatch(rf"/t/{mine['id']}\?token=[0-9a-f]{{64}}", link)
    await page.goto(live_server.url + link)
    await expect(page.locator("#code")).to_have_text(mine["display_code"], timeout=5000)
    await expect(page.locator("#place")).to_contain_text("Number 2 in line", timeout=FAST)
    await no_serious_violations(page)
    await shot(page, "ticket")

    await client.post(f"/v1/queues/{s.queue['id']}/call-next", json={}, headers=s.t.h)  # the one ahead
    await expect(page.locator("#place")).to_contain_text("You are next", timeout=FAST)
    assert ahead["id"] != mine["id"]
    await client.post(f"/v1/queues/{s.queue['id']}/call-next", json={}, headers=s.t.h)
    await expect(page.locator("#turn")).to_contain_text("your turn", timeout=FAST)
    await s.t.move(mine["id"], "mark_ready")
    await expect(page.locator("#turn")).to_contain_text("ready", timeout=FAST)


async def test_the_customer_link_opens_only_its_own_ticket(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer
) -> None:
    s = await shop(client, api)
    mine, other = await s.ticket(), await s.ticket()
    token = mine["customer_page"].split("token=")[1]
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        shown = ok(await http.get(f"/v1/public/tickets/{mine['id']}", headers={"X-Ticket-Token": token}))
        assert shown["display_code"] == mine["display_code"]
        assert set(shown) == {
            "id", "display_code", "queue_id", "queue_name", "current_state", "state_category", "position",
            "counter", "estimated_wait_minutes", "show_wait_time", "can_leave", "updated_at",
        }  # fmt: skip
        for ticket_id, given in ((other["id"], token), (mine["id"], "0" * 64), (mine["id"], "")):
            response = await http.get(f"/v1/public/tickets/{ticket_id}", params={"token": given})
            assert response.status_code == 404
        response = await http.get(f"/v1/public/tickets/{other['id']}/stream", params={"token": token})
        assert response.status_code == 404
    # A display key never sees the links.
    listing = ok(await client.get(f"/v1/queues/{s.queue['id']}/tickets", headers=auth(s.keys["display"])))
    assert all(row["customer_page"] is None for row in listing["data"])


async def test_demo_data_and_its_urls(client: httpx.AsyncClient, live_server: LiveServer, page: Page) -> None:
    from tests.conftest import ADMIN_KEY
    from virtualq import demo

    coffee, dmv = await demo.build(client, ADMIN_KEY)
    assert set(dmv.queues) == {"Registration", "Licences", "Testing"}
    assert set(coffee.keys) == {"admin", "staff", "display"}
    for place in (coffee, dmv):
        urls = demo.urls(live_server.url, place)
        await page.goto(urls["display"])
        await expect(page.locator(".column.waiting li").first).to_be_visible(timeout=5000)
        await no_serious_violations(page)
        await page.goto(urls["customer"])
        await expect(page.locator("#place")).to_contain_text("in line", timeout=5000)
        await page.goto(urls["console"])
        await expect(page.locator("#line tr").first).to_be_visible(timeout=5000)
    # The coffee shop takes orders at the door too: its join link and the QR code to print.
    urls = demo.urls(live_server.url, coffee)
    assert "join" not in demo.urls(live_server.url, dmv)
    await page.goto(urls["join"])
    await expect(page.locator("#queue")).to_have_text("Main counter", timeout=5000)
    async with httpx.AsyncClient() as http:
        qr = await http.get(urls["join QR"])
    assert (qr.status_code, qr.headers["content-type"]) == (200, "image/svg+xml")
    await page.goto(demo.urls(live_server.url, dmv)["display"])
    await expect(page.locator("#queues h2")).to_have_text(
        ["Registration", "Licences", "Testing"], timeout=5000
    )


async def test_customers_join_by_themselves_on_a_phone_and_at_a_kiosk(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    t = await Tenant.create(client, api)
    schema = {
        "type": "object",
        "properties": {
            "party_size": {"type": "integer", "minimum": 1, "maximum": 12, "title": "Party size"},
            "seating": {"enum": ["inside", "terrace"]},
            "high_chair": {"type": "boolean", "title": "High chair"},
            "note": {"type": "string"},
        },
        "required": ["party_size", "seating", "high_chair"],
    }
    table = await t.type("table", ORDER_FSM, custom_fields_schema=schema)
    queue = await t.queue(
        "Tables",
        ticket_prefix="T",
        self_join_type_definition_id=table["id"],
        wait_estimation_method="manual",
        manual_wait_minutes=4,
    )

    # The wall shows the link's QR code (a display key reads the queue's join_page).
    display_key = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    wall = await page.context.new_page()
    await wall.goto(f"{live_server.url}/display/queues/{queue['id']}#key={display_key}")
    qr = wall.locator("#join-qr")
    await expect(qr).to_be_visible(timeout=5000)
    await expect(qr).to_have_attribute("src", queue["join_page"] + "/qr.svg")
    assert await qr.evaluate("img => img.naturalWidth") > 0  # the image loaded (the page's policy allows it)
    await shot(wall, "display-join")

    # A phone, from the QR code: the form asks for the name and the required fields only.
    keys: list[str | None] = []
    page.on(
        "request",
        lambda r: keys.append(r.headers.get("idempotency-key")) if r.method == "POST" else None,
    )
    await page.goto(live_server.url + queue["join_page"])
    await expect(page.locator("#queue")).to_have_text("Tables", timeout=5000)
    await expect(page.locator("#line")).to_have_text("Nobody is waiting · about 4 min")
    await expect(page.locator("[data-field]")).to_have_count(3)
    await no_serious_violations(page)
    await page.get_by_label("First name").fill("Ana")
    await page.get_by_label("Last name").fill("Lopez")
    await page.get_by_role("button", name="Join the line").click()
    await expect(page.locator("#status")).to_have_text("Please fill in Party size.")
    await page.get_by_label("Party size").fill("3")
    await page.get_by_label("Seating").select_option(label="terrace")
    await page.get_by_label("High chair").check()
    await shot(page, "join")
    await page.get_by_role("button", name="Join the line").click()
    # Joined: the customer's own page, following the ticket.
    await expect(page).to_have_url(re.compile(r"/t/[0-9a-f-]{36}\?token=[0-9a-f]{64}$"), timeout=5000)
    await expect(page.locator("#code")).to_have_text("T001", timeout=5000)
    await expect(page.locator("#place")).to_contain_text("You are next")
    ticket_id = page.url.split("/t/")[1].split("?")[0]
    assert len(keys) == 1, keys
    assert re.fullmatch(r"[0-9a-f]{32}", keys[0] or ""), keys  # a retry of this form would join once
    ticket = await t.get(f"/v1/tickets/{ticket_id}")
    assert ticket["custom_data"] == {"party_size": 3, "seating": "terrace", "high_chair": True}
    monitor = await t.get(f"/v1/queues/{queue['id']}/monitor")
    assert [w["display_name"] for w in monitor["groups"]["waiting"]] == ["Ana L."]

    # A kiosk: the number is shown, then the form is ready for the next customer.
    await page.goto(live_server.url + queue["join_page"] + "?kiosk=1")
    await expect(page.locator("#line")).to_have_text("1 person is waiting · about 8 min", timeout=5000)
    await page.get_by_label("Party size").fill("2")
    await page.get_by_label("Seating").select_option(label="inside")
    await page.get_by_role("button", name="Join the line").click()
    await expect(page.locator("#joined #code")).to_have_text("T002", timeout=5000)
    await expect(page.locator("#joined #place")).to_have_text("Number 2 in line")
    assert "/join/" in page.url
    await page.get_by_role("button", name="Done").click()
    await expect(page.locator("#form")).to_be_visible()
    await expect(page.locator("#line")).to_have_text("2 people are waiting · about 12 min", timeout=FAST)
    await expect(page.get_by_label("Party size")).to_have_value("")
    second = await t.get("/v1/tickets", queue_id=queue["id"])
    assert sorted(row["display_code"] for row in second["data"]) == ["T001", "T002"]

    # A closed queue, and a link that was replaced: the page says so.
    ok(await client.post(f"/v1/queues/{queue['id']}/disable", headers=t.h))
    await page.reload()
    await expect(page.locator("#status")).to_have_text(
        "This line is not taking sign-ins right now.", timeout=5000
    )
    await expect(page.locator("#form")).to_be_hidden()
    rotated = ok(await client.post(f"/v1/queues/{queue['id']}/rotate-join-link", headers=t.h))
    await page.reload()
    await expect(page.locator("#status")).to_have_text("This join link is not in use.", timeout=5000)
    # The wall follows: the new code at once, none once self-join is off.
    await expect(qr).to_have_attribute("src", rotated["join_page"] + "/qr.svg", timeout=FAST)
    ok(
        await client.patch(
            f"/v1/queues/{queue['id']}", json={"self_join_type_definition_id": None}, headers=t.h
        )
    )
    await expect(wall.locator("#join")).to_be_hidden(timeout=FAST)


async def test_a_customer_leaves_the_line_from_their_page(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    mine, behind = await s.ticket(), await s.ticket()
    await page.goto(live_server.url + mine["customer_page"])
    leave = page.locator("#leave")
    await expect(leave).to_have_text("Leave the line", timeout=5000)
    await leave.dblclick()  # a double tap asks; it does not leave
    await expect(leave).to_have_text("Yes, leave the line")
    await expect(leave).to_have_text("Leave the line", timeout=7000)  # the question lapses
    assert (await s.t.get(f"/v1/tickets/{mine['id']}"))["state_category"] == "waiting"
    await leave.click()
    await expect(leave).to_have_text("Yes, leave the line")  # a second press, so a slip does not leave
    assert (await s.t.get(f"/v1/tickets/{mine['id']}"))["state_category"] == "waiting"
    await no_serious_violations(page)
    await page.wait_for_timeout(700)  # a deliberate second press, not a double tap
    await leave.click()
    await expect(page.locator("#turn")).to_have_text("You left the line.", timeout=FAST)
    await expect(leave).to_be_hidden()
    assert (await s.t.get(f"/v1/tickets/{mine['id']}"))["state_category"] == "cancelled"
    assert (await s.t.get(f"/v1/tickets/{behind['id']}"))["position"] == 1

    # Once called, the page offers no way out: staff decide from there.
    await page.goto(live_server.url + behind["customer_page"])
    await expect(page.locator("#leave")).to_be_visible(timeout=5000)
    await client.post(f"/v1/queues/{s.queue['id']}/call-next", json={}, headers=s.t.h)
    await expect(page.locator("#turn")).to_contain_text("your turn", timeout=FAST)
    await expect(page.locator("#leave")).to_be_hidden()


async def test_the_console_calls_as_its_employee_across_their_queues(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, page: Page
) -> None:
    s = await shop(client, api)
    other = await s.t.queue("Drive-thru", ticket_prefix="D")
    ana = ok(
        await client.post(
            "/v1/employees",
            json={"fname": "Ana", "lname": "Lopez", "email": "ana@example.com"},
            headers=s.t.h,
        ),
        201,
    )
    both = {"queue_ids": [s.queue["id"], other["id"]]}
    ok(await client.put(f"/v1/employees/{ana['id']}/queues", json=both, headers=s.t.h))
    key = await api.key(
        "tenant", "staff", key=s.t.world.tenant_admin, tenant_id=s.t.id, employee_id=ana["id"]
    )
    earlier = await s.t.ticket(other["id"], s.order["id"])  # in the other line, and first to join
    later = await s.ticket()

    await page.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={key}")
    await expect(page.locator("#me")).to_have_text("Calling as Ana Lopez", timeout=5000)
    mine = page.get_by_role("button", name="Call next in my queues")
    await expect(mine).to_be_visible()
    await page.get_by_label("Counter").fill("Window 1")
    await mine.click()
    await expect(page.locator("#message")).to_have_text(
        f"Called {earlier['display_code']} to Window 1", timeout=FAST
    )
    called = await s.t.get(f"/v1/tickets/{earlier['id']}")
    assert (called["state_category"], called["employee_id"], called["counter"]) == (
        "in_service",
        ana["id"],
        "Window 1",
    )
    assert (await s.t.get(f"/v1/tickets/{later['id']}"))["state_category"] == "waiting"

    # A key bound to nobody (or to someone with one queue) has the queue's own button only.
    await page.goto(f"{live_server.url}/console/queues/{s.queue['id']}#key={s.keys['staff']}")
    await page.reload()  # only the fragment changed: load the page again with the other key
    await expect(page.locator("#line tr")).to_have_count(1, timeout=5000)
    await expect(page.locator("#me")).to_have_text("")
    await expect(page.get_by_role("button", name="Call next in my queues")).to_be_hidden()
