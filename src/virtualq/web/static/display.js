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
  let refused = false;  // the key was refused: that message stays

  if (!key) {
    status.textContent = "This display needs a display key: open it as …#key=vq_…";
    return;
  }

  function ticketItem(ticket, showWait) {
    const wait = showWait && ticket.state_category === "waiting" && ticket.estimated_wait_minutes !== null && ticket.estimated_wait_minutes !== undefined
      ? VQ.el("span", { class: "wait", text: "~" + ticket.estimated_wait_minutes + " min" }) : null;
    return VQ.el("li", { class: "ticket", "data-code": ticket.display_code, "data-state": ticket.state },
      VQ.el("span", { class: "code", text: ticket.display_code }),
      VQ.el("span", { class: "name", text: ticket.display_name }),
      wait);
  }

  async function refresh() {
    try {
      const feeds = await Promise.all(queueIds.map((id) => VQ.api("/v1/queues/" + id + "/monitor", { key })));
      main.replaceChildren(...feeds.map((feed) => {
        const columns = COLUMNS.map(([category, title]) => VQ.el("section", { class: "column " + category, "aria-label": title },
          VQ.el("h3", { text: title + " (" + feed.counts[category] + ")" }),
          VQ.el("ol", {}, ...feed.groups[category].map((t) => ticketItem(t, feed.show_wait_time)))));
        return VQ.el("article", { class: "queue", "data-queue": feed.queue_id },
          VQ.el("h2", { text: feed.queue_name + (feed.is_active ? "" : " — closed to new tickets") }),
          VQ.el("div", { class: "columns" }, ...columns));
      }));
      if (!recent.length) {  // on first load, the tickets already called stand in for the latest calls
        for (const feed of feeds) for (const t of [...feed.groups.ready, ...feed.groups.in_service]) recent.push(t.display_code);
        recent.splice(5);
        calling.replaceChildren(...recent.map((c) => VQ.el("li", { text: c })));
      }
      status.textContent = "";
    } catch (error) {
      refused = refused || error.status === 401 || error.status === 403;
      status.textContent = VQ.problem(error, "display");
    }
  }

  function announce(code, state) {
    recent.unshift(code);
    recent.splice(5);
    calling.replaceChildren(...recent.map((c, i) => VQ.el("li", { class: i === 0 ? "latest" : "", text: c })));
    announcer.textContent = "Now calling " + code + (state ? " — " + state.replace(/_/g, " ") : "");
  }

  const later = VQ.debounce(refresh, 30);
  VQ.follow("/v1/events/stream", headers, (type, event) => {
    const data = event.data || {};
    // A forward is filed under the queue the ticket joined: the queue it left must redraw too.
    if (!queueIds.includes(event.queue_id) && !queueIds.includes(data.previous_queue_id)) return;
    if (type === "ticket.state_changed" && data.previous_state && (data.state_category === "in_service" || data.state_category === "ready")) {
      announce(data.display_code, data.current_state);
    }
    later();
  }, {
    onOpen: (reconnected) => { refused = false; status.textContent = ""; if (reconnected) refresh(); },
    onDown: () => { if (!refused) status.textContent = "Reconnecting…"; },
    onRefused: (error) => { refused = true; status.textContent = VQ.problem(error, "display"); },
  });
  refresh();
})();
