// The staff console: the line in order, call next, transitions from the state machine, assign, forward,
// reorder, cancel. Every action is an API call with the staff key; errors are shown as they come.
"use strict";
(() => {
  const queueId = location.pathname.split("/").pop();
  let key = VQ.takeKey("console");
  const line = document.getElementById("line");
  const message = document.getElementById("message");
  const title = document.getElementById("title");
  const login = document.getElementById("login");
  const types = new Map();
  let queues = [];
  let employees = [];

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "info";
  }

  async function act(label, fn) {
    try {
      await fn();
      say(label, false);
    } catch (error) {
      say(error.message, true);
    }
    await refresh();
  }

  function transitionsFrom(fsm, state) {
    const names = [];
    for (const t of (fsm && fsm.transitions) || []) {
      const from = t.from === "*" ? [state] : Array.isArray(t.from) ? t.from : [t.from];
      if (from.includes(state) && !names.includes(t.name)) names.push(t.name);
    }
    return names;
  }

  async function typeOf(id) {
    if (!types.has(id)) types.set(id, await VQ.api("/v1/type-definitions/" + id, { key }));
    return types.get(id);
  }

  function row(ticket, fsm) {
    const post = (path, body) => VQ.api(path, { key, method: "POST", body });
    // "cancel" has its own button (DELETE applies whichever transition cancels from this state).
    const buttons = transitionsFrom(fsm, ticket.current_state).filter((name) => name !== "cancel").map((name) =>
      VQ.el("button", { type: "button", "data-transition": name, text: name.replace(/_/g, " "),
        onclick: () => act(ticket.display_code + ": " + name, () => post("/v1/tickets/" + ticket.id + "/transition", { transition: name })) }));
    const forwardTo = VQ.el("select", { "aria-label": "Forward " + ticket.display_code + " to" },
      ...queues.filter((q) => q.id !== queueId).map((q) => VQ.el("option", { value: q.id, text: q.name })));
    const assignTo = VQ.el("select", { "aria-label": "Assign " + ticket.display_code + " to" },
      VQ.el("option", { value: "", text: "— nobody —" }),
      ...employees.map((e) => VQ.el("option", { value: e.id, text: e.fname + " " + e.lname, selected: e.id === ticket.employee_id })));
    const moves = ticket.position ? [
      VQ.el("button", { type: "button", class: "up", "aria-label": "Move " + ticket.display_code + " up", text: "▲",
        onclick: () => act("Moved " + ticket.display_code, () => post("/v1/tickets/" + ticket.id + "/reorder", { position: Math.max(1, ticket.position - 1) })) }),
      VQ.el("button", { type: "button", class: "down", "aria-label": "Move " + ticket.display_code + " down", text: "▼",
        onclick: () => act("Moved " + ticket.display_code, () => post("/v1/tickets/" + ticket.id + "/reorder", { position: ticket.position + 1 })) }),
    ] : [];
    return VQ.el("tr", { "data-ticket": ticket.id, "data-code": ticket.display_code },
      VQ.el("td", { text: ticket.position || "" }),
      VQ.el("th", { scope: "row", text: ticket.display_code }),
      VQ.el("td", { class: "state", text: ticket.current_state.replace(/_/g, " ") }),
      VQ.el("td", { class: "actions" }, ...buttons,
        VQ.el("button", { type: "button", class: "cancel", text: "cancel",
          onclick: () => act("Cancelled " + ticket.display_code, () => VQ.api("/v1/tickets/" + ticket.id, { key, method: "DELETE" })) })),
      VQ.el("td", {}, ...moves),
      VQ.el("td", {}, ...(queues.length > 1 ? [forwardTo, VQ.el("button", { type: "button", text: "forward",
        onclick: () => act("Forwarded " + ticket.display_code, () => post("/v1/tickets/" + ticket.id + "/forward", { target_queue_id: forwardTo.value })) })] : [])),
      VQ.el("td", {}, assignTo, VQ.el("button", { type: "button", text: "assign",
        onclick: () => act("Assigned " + ticket.display_code, () => assignTo.value
          ? post("/v1/tickets/" + ticket.id + "/assign", { employee_id: assignTo.value })
          : post("/v1/tickets/" + ticket.id + "/unassign")) })));
  }

  async function refresh() {
    try {
      const [queue, page] = await Promise.all([
        VQ.api("/v1/queues/" + queueId, { key }),
        VQ.api("/v1/queues/" + queueId + "/tickets?limit=100", { key }),
      ]);
      title.textContent = queue.name + (queue.is_active ? "" : " (closed to new tickets)");
      const rows = [];
      for (const ticket of page.data) rows.push(row(ticket, (await typeOf(ticket.type_definition_id)).fsm_schema));
      line.replaceChildren(...rows);
    } catch (error) {
      say(error.message, true);
    }
  }

  async function start() {
    login.hidden = true;
    document.getElementById("console").hidden = false;
    try {
      [queues, employees] = await Promise.all([
        VQ.api("/v1/queues?limit=100", { key }).then((p) => p.data),
        VQ.api("/v1/employees?limit=100&is_active=true", { key }).then((p) => p.data),
      ]);
    } catch (error) {
      say(error.message, true);
    }
    document.getElementById("call-next").addEventListener("click", () => act("Called next", async () => {
      const ticket = await VQ.api("/v1/queues/" + queueId + "/call-next", { key, method: "POST", body: {} });
      say("Called " + ticket.display_code, false);
    }));
    VQ.follow("/v1/events/stream?queue_id=" + queueId, { Authorization: "Bearer " + key }, VQ.debounce(refresh, 30),
      { onOpen: (reconnected) => { if (reconnected) refresh(); }, onRefused: (error) => say(error.message, true) });
    refresh();
  }

  login.addEventListener("submit", (event) => {
    event.preventDefault();
    key = document.getElementById("key").value.trim();
    sessionStorage.setItem("vq-key-console", key);
    start();
  });
  if (key) start();
})();
