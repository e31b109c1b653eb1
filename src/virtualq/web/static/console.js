// The staff console: the line in order, call next, transitions from the state machine, assign, forward,
// reorder, cancel. Every action is an API call with the staff key; errors are shown as they come.
"use strict";
(() => {
  const queueId = location.pathname.split("/").pop();
  const LIMIT = 100;
  let key = VQ.takeKey("console");
  const line = document.getElementById("line");
  const message = document.getElementById("message");
  const title = document.getElementById("title");
  const login = document.getElementById("login");
  const offline = document.getElementById("offline");
  const shown = document.getElementById("shown");
  const callNext = document.getElementById("call-next");
  const callMine = document.getElementById("call-mine");
  let employee = null;  // whom this key calls as (GET /v1/me), if anyone
  // Where this workstation calls customers to ("Desk 2"): kept in this browser, sent with every call.
  const counter = document.getElementById("counter");
  counter.value = localStorage.getItem("vq-counter") || "";
  counter.addEventListener("change", () => localStorage.setItem("vq-counter", counter.value.trim()));
  const types = new Map();
  // What a member of staff has chosen in a row's Forward or Assign list and not sent yet: kept across the
  // redraws that every change in the queue causes ("<ticket id>:forward" -> queue id).
  const pending = new Map();
  let queues = [];
  let employees = [];
  let stream = null;
  let deferred = false;

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "info";
  }

  function refusedKey(error) {
    return error.status === 401 || error.status === 403;
  }

  // A key the server refuses (wrong, revoked, a display key): back to the key form, saying why.
  function backToLogin(error) {
    if (stream) stream.stop();
    stream = null;
    showEmployee(null);  // the next key may be someone else's
    sessionStorage.removeItem("vq-key-console");
    key = null;
    document.getElementById("console").hidden = true;
    login.hidden = false;
    document.getElementById("refused").textContent = "This key was refused: " + error.message + ".";
    document.getElementById("key").focus();
  }

  async function act(label, fn) {
    try {
      const result = await fn();
      say(typeof label === "function" ? label(result) : label, false);
    } catch (error) {
      if (refusedKey(error) && error.code === "unauthorized") return backToLogin(error);
      say(error.message, true);
    }
    await refresh();
  }

  function fromList(t, state) {
    return t.from === "*" ? [state] : Array.isArray(t.from) ? t.from : [t.from];
  }

  function transitionsFrom(fsm, state) {
    const names = [];
    for (const t of (fsm && fsm.transitions) || []) {
      if (fromList(t, state).includes(state) && !names.includes(t.name)) names.push(t.name);
    }
    return names;
  }

  // Whether some transition from `state` leads to a cancelled state (what DELETE applies).
  function cancellable(type, state) {
    const categories = type.state_categories || {};
    return ((type.fsm_schema && type.fsm_schema.transitions) || []).some((t) =>
      fromList(t, state).includes(state) && (categories[t.to] === "cancelled" || (!type.state_categories && t.name === "cancel")));
  }

  async function typeOf(id) {
    if (!types.has(id)) types.set(id, await VQ.api("/v1/type-definitions/" + id, { key }));
    return types.get(id);
  }

  function remembered(select, ticket, role) {
    const name = ticket.id + ":" + role;
    if (pending.has(name)) select.value = pending.get(name);
    select.addEventListener("change", () => pending.set(name, select.value));
    return select;
  }

  function row(ticket, type) {
    const post = (path, body) => VQ.api(path, { key, method: "POST", body });
    const code = ticket.display_code;
    // "cancel" has its own button (DELETE applies whichever transition cancels from this state).
    const buttons = transitionsFrom(type.fsm_schema, ticket.current_state).filter((name) => name !== "cancel").map((name) =>
      VQ.el("button", { type: "button", "data-transition": name, "data-focus": "t:" + name, text: name.replace(/_/g, " "),
        onclick: () => act(code + ": " + name.replace(/_/g, " "), () => post("/v1/tickets/" + ticket.id + "/transition", { transition: name })) }));
    // Only the queues this ticket can go to: open, and taking its type.
    const targets = queues.filter((q) => q.id !== queueId && q.is_active
      && (!q.allowed_type_definition_ids || !q.allowed_type_definition_ids.length || q.allowed_type_definition_ids.includes(ticket.type_definition_id)));
    const forwardTo = remembered(VQ.el("select", { "aria-label": "Forward " + code + " to", "data-focus": "forward-to" },
      ...targets.map((q) => VQ.el("option", { value: q.id, text: q.name }))), ticket, "forward");
    const assignTo = remembered(VQ.el("select", { "aria-label": "Assign " + code + " to", "data-focus": "assign-to" },
      VQ.el("option", { value: "", text: "— nobody —" }),
      ...employees.map((e) => VQ.el("option", { value: e.id, text: e.fname + " " + e.lname, selected: e.id === ticket.employee_id }))), ticket, "assign");
    const moves = ticket.position ? [
      VQ.el("button", { type: "button", class: "up", "data-focus": "up", "aria-label": "Move " + code + " up", text: "▲",
        onclick: () => act("Moved " + code, () => post("/v1/tickets/" + ticket.id + "/reorder", { position: Math.max(1, ticket.position - 1) })) }),
      VQ.el("button", { type: "button", class: "down", "data-focus": "down", "aria-label": "Move " + code + " down", text: "▼",
        onclick: () => act("Moved " + code, () => post("/v1/tickets/" + ticket.id + "/reorder", { position: ticket.position + 1 })) }),
    ] : [];
    // A called customer who has not come: call them again (the wall and their page announce it).
    const recall = ticket.state_category === "in_service" || ticket.state_category === "ready"
      ? VQ.el("button", { type: "button", class: "recall", "data-focus": "recall", text: "recall",
        onclick: () => act("Recalled " + code, () => post("/v1/tickets/" + ticket.id + "/recall", {})) })
      : null;
    const cancel = cancellable(type, ticket.current_state)
      ? VQ.el("button", { type: "button", class: "cancel", "data-focus": "cancel", text: "cancel",
        onclick: () => act("Cancelled " + code, () => VQ.api("/v1/tickets/" + ticket.id, { key, method: "DELETE" })) })
      : null;
    return VQ.el("tr", { "data-ticket": ticket.id, "data-code": code },
      VQ.el("td", { text: ticket.position || "" }),
      VQ.el("th", { scope: "row", text: code }),
      VQ.el("td", { class: "state", text: ticket.current_state.replace(/_/g, " ") + (ticket.counter ? " · " + ticket.counter : "") }),
      VQ.el("td", { class: "actions" }, ...buttons, recall, cancel),
      VQ.el("td", {}, ...moves),
      VQ.el("td", {}, ...(targets.length ? [forwardTo, VQ.el("button", { type: "button", "data-focus": "forward", text: "forward",
        onclick: () => act("Forwarded " + code, async () => {
          await post("/v1/tickets/" + ticket.id + "/forward", { target_queue_id: forwardTo.value });
          pending.delete(ticket.id + ":forward");
        }) })] : [])),
      VQ.el("td", {}, assignTo, VQ.el("button", { type: "button", "data-focus": "assign", text: "assign",
        onclick: () => act("Assigned " + code, async () => {
          await (assignTo.value
            ? post("/v1/tickets/" + ticket.id + "/assign", { employee_id: assignTo.value })
            : post("/v1/tickets/" + ticket.id + "/unassign"));
          pending.delete(ticket.id + ":assign");
        }) })));
  }

  // Where the keyboard focus is in the table, to put it back after a redraw: the row (ticket) and the
  // control in it; if that ticket has left the line, the row that took its place.
  function focusPlace() {
    const active = document.activeElement;
    const tr = active && active.closest ? active.closest("#line tr") : null;
    if (!tr) return null;
    return { ticket: tr.dataset.ticket, control: active.dataset.focus, index: [...line.children].indexOf(tr) };
  }

  function restoreFocus(place) {
    if (!place) return;
    let tr = line.querySelector("tr[data-ticket='" + place.ticket + "']");
    if (!tr) tr = line.children[Math.min(place.index, line.children.length - 1)] || null;
    if (!tr) return callNext.focus();
    const control = tr.querySelector("[data-focus='" + place.control + "']") || tr.querySelector("button, select");
    if (control) control.focus();
  }

  async function refresh() {
    // A list open in a row (choosing whom to assign, where to forward) is not redrawn under the hand that
    // is choosing: the redraw waits until it closes.
    if (document.activeElement && document.activeElement.tagName === "SELECT" && line.contains(document.activeElement)) {
      deferred = true;
      return;
    }
    try {
      const [queue, page] = await Promise.all([
        VQ.api("/v1/queues/" + queueId, { key }),
        VQ.api("/v1/queues/" + queueId + "/tickets?limit=" + LIMIT, { key }),
      ]);
      title.textContent = queue.name + (queue.is_active ? "" : " (closed to new tickets)");
      const rows = [];
      for (const ticket of page.data) rows.push(row(ticket, await typeOf(ticket.type_definition_id)));
      const place = focusPlace();
      line.replaceChildren(...rows);
      restoreFocus(place);
      const total = page.pagination.total;
      shown.textContent = total > page.data.length ? "Showing the first " + page.data.length + " of " + total + " tickets." : "";
      const left = new Set(page.data.map((t) => t.id));
      for (const name of pending.keys()) if (!left.has(name.split(":")[0])) pending.delete(name);
    } catch (error) {
      if (refusedKey(error) && error.code === "unauthorized") return backToLogin(error);
      say(error.status ? error.message : "Cannot reach the server.", true);
    }
  }
  line.addEventListener("focusout", () => {
    if (deferred) {
      deferred = false;
      setTimeout(refresh, 0);
    }
  });

  async function start() {
    login.hidden = true;
    document.getElementById("refused").textContent = "";
    document.getElementById("console").hidden = false;
    showEmployee(null);
    // Whom the key calls as: nobody if that cannot be read (the queue's own call still works).
    VQ.api("/v1/me", { key }).then((me) => showEmployee(me.employee), () => showEmployee(null));
    try {
      [queues, employees] = await Promise.all([
        VQ.api("/v1/queues?limit=100", { key }).then((p) => p.data),
        VQ.api("/v1/employees?limit=100&is_active=true", { key }).then((p) => p.data),
      ]);
    } catch (error) {
      if (refusedKey(error)) return backToLogin(error);
      say(error.message, true);
    }
    stream = VQ.follow("/v1/events/stream?queue_id=" + queueId, { Authorization: "Bearer " + key }, VQ.debounce(refresh, 30), {
      onOpen: (reconnected) => {
        if (!offline.hidden) {
          offline.hidden = true;
          if (message.className === "error") say("", false);  // the failure it showed is over
        }
        if (reconnected) refresh();
      },
      onDown: () => { offline.hidden = false; },
      onRefused: (error) => backToLogin(error),
    });
    refresh();
  }

  // A key bound to a member of staff calls as them; across their queues when they serve this one and others.
  function showEmployee(who) {
    employee = who;
    document.getElementById("me").textContent = who ? "Calling as " + who.fname + " " + who.lname : "";
    callMine.hidden = !who || who.queue_ids.length < 2 || !who.queue_ids.includes(queueId);
  }

  // One call at a time: a double click must not call two people.
  async function call(button, path) {
    if (callNext.disabled || callMine.disabled) return;
    callNext.disabled = callMine.disabled = true;
    try {
      const at = counter.value.trim();
      await act((ticket) => "Called " + ticket.display_code + (ticket.counter ? " to " + ticket.counter : ""),
        () => VQ.api(path, { key, method: "POST", body: at ? { counter: at } : {} }));
    } finally {
      callNext.disabled = callMine.disabled = false;
    }
  }
  callNext.addEventListener("click", () => call(callNext, "/v1/queues/" + queueId + "/call-next"));
  callMine.addEventListener("click", () => { if (employee) call(callMine, "/v1/employees/" + employee.id + "/call-next"); });

  login.addEventListener("submit", (event) => {
    event.preventDefault();
    key = document.getElementById("key").value.trim();
    sessionStorage.setItem("vq-key-console", key);
    start();
  });
  if (key) start();
})();
