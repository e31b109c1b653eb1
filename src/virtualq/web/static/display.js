// The wall display: columns per category for one or more queues, a "now calling" area, live updates.
"use strict";
(() => {
  const COLUMNS = [["waiting", "Waiting"], ["in_service", "In progress"], ["ready", "Ready"]];
  const key = VQ.takeKey("display");
  const main = document.getElementById("queues");
  const calling = document.getElementById("calling");
  const announcer = document.getElementById("announcer");
  const status = document.getElementById("status");
  const pathId = location.pathname.split("/").pop();
  const extra = (new URLSearchParams(location.search).get("queues") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const queueIds = [...new Set([pathId, ...extra])];
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const recent = [];
  const counters = new Map();  // display code -> the counter that called it ("Desk 2")
  let refused = false;  // the key was refused: that message stays

  if (!key) {
    status.textContent = "This display needs a display key: open it as …#key=vq_…";
    return;
  }

  // A wall shows the head of each column and how many more there are: a long line must not push the other
  // queues off the screen.
  const SHOWN = { waiting: 8, in_service: 6, ready: 6 };

  function ticketItem(ticket, showWait) {
    const wait = showWait && ticket.state_category === "waiting" && ticket.estimated_wait_minutes !== null && ticket.estimated_wait_minutes !== undefined
      ? VQ.el("span", { class: "wait", text: VQ.waitText(ticket.estimated_wait_minutes, true) }) : null;
    const counter = ticket.counter ? VQ.el("span", { class: "counter", text: "→ " + ticket.counter }) : null;
    return VQ.el("li", { class: "ticket", "data-code": ticket.display_code, "data-state": ticket.state },
      VQ.el("span", { class: "code", text: ticket.display_code }),
      VQ.el("span", { class: "name", text: ticket.display_name }),
      counter, wait);
  }

  async function refresh() {
    try {
      const feeds = await Promise.all(queueIds.map((id) => VQ.api("/v1/queues/" + id + "/monitor?limit=" + SHOWN.waiting, { key })));
      main.replaceChildren(...feeds.map((feed) => {
        const columns = COLUMNS.map(([category, title]) => {
          const shown = feed.groups[category].slice(0, SHOWN[category]);
          const more = feed.counts[category] - shown.length;
          return VQ.el("section", { class: "column " + category, "aria-label": title },
            VQ.el("h3", { text: title + " (" + feed.counts[category] + ")" }),
            VQ.el("ol", {}, ...shown.map((t) => ticketItem(t, feed.show_wait_time)),
              more > 0 ? VQ.el("li", { class: "more", text: "+ " + more + " more" }) : null));
        });
        return VQ.el("article", { class: "queue", "data-queue": feed.queue_id },
          VQ.el("h2", { text: feed.queue_name + (feed.is_active ? "" : " — closed to new tickets") }),
          VQ.el("div", { class: "columns" }, ...columns));
      }));
      // "Now calling" holds tickets still called (in service or ready), most recent call first: one that
      // has been served since leaves it. On first load (and after a reconnect) the tickets already called
      // stand in, ready ones first, in line order.
      const called = new Set();
      counters.clear();
      for (const feed of feeds) {
        for (const t of [...feed.groups.ready, ...feed.groups.in_service]) {
          called.add(t.display_code);
          if (t.counter) counters.set(t.display_code, t.counter);
        }
      }
      const kept = recent.filter((c) => called.has(c));
      for (const c of called) if (!kept.includes(c)) kept.push(c);
      recent.splice(0, recent.length, ...kept.slice(0, 5));
      drawCalling();
      status.textContent = "";
    } catch (error) {
      refuse(error);
    }
  }

  // A refused key (revoked, tenant deactivated) or a queue that is not there: no stale board for the
  // customers to read, only the message.
  function refuse(error) {
    if (error.status) {
      refused = refused || error.status === 401 || error.status === 403;
      main.replaceChildren();
      recent.splice(0);
      drawCalling();
    }
    status.textContent = VQ.problem(error, "display");
  }

  function drawCalling() {
    calling.replaceChildren(...recent.map((c, i) => VQ.el("li", { class: i === 0 ? "latest" : "", "data-code": c },
      c, counters.has(c) ? VQ.el("span", { class: "counter", text: " → " + counters.get(c) }) : null)));
  }

  function announce(code, state, counter) {
    const known = recent.indexOf(code);
    if (known >= 0) recent.splice(known, 1);  // called again, or moved on to ready: once, at the front
    recent.unshift(code);
    recent.splice(5);
    if (counter) counters.set(code, counter);
    drawCalling();
    announcer.textContent = "Now calling " + code + (counter ? ", please go to " + counter : "")
      + (state ? " — " + state.replace(/_/g, " ") : "");
  }

  // The first queue's self-join QR code, while it has one (`?qr=0`: never). Its link can change (turned
  // off, replaced): read again on the queue's `queue.updated` and after a reconnect.
  const joinBox = document.getElementById("join");
  const joinQr = document.getElementById("join-qr");
  const showQr = new URLSearchParams(location.search).get("qr") !== "0";
  async function loadJoin() {
    if (!showQr) return;
    try {
      const queue = await VQ.api("/v1/queues/" + pathId, { key });
      // The code is served by this server whatever PUBLIC_BASE_URL says (the page allows its own images).
      const src = queue.join_page ? new URL(queue.join_page, location.origin).pathname + "/qr.svg" : null;
      if (src && joinQr.getAttribute("src") !== src) joinQr.src = src;
      joinBox.hidden = !src;
    } catch (error) {
      joinBox.hidden = true;
    }
  }

  const later = VQ.debounce(refresh, 30);
  VQ.follow("/v1/events/stream", headers, (type, event) => {
    const data = event.data || {};
    // A forward is filed under the queue the ticket joined: the queue it left must redraw too.
    if (!queueIds.includes(event.queue_id) && !queueIds.includes(data.previous_queue_id)) return;
    if (type === "queue.updated" && event.queue_id === pathId) loadJoin();
    if (type === "ticket.state_changed" && data.previous_state && (data.state_category === "in_service" || data.state_category === "ready")) {
      announce(data.display_code, data.current_state, data.counter);
    }
    if (type === "ticket.recalled") announce(data.display_code, data.current_state, data.counter);
    later();
  }, {
    onOpen: (reconnected) => { refused = false; status.textContent = ""; if (reconnected) { refresh(); loadJoin(); } },
    onDown: () => { if (!refused) status.textContent = "Reconnecting…"; },
    onRefused: (error) => { refuse(error); },
  });
  refresh();
  loadJoin();
})();
