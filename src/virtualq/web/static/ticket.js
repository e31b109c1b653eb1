// A customer's own ticket: code, state, place in line, estimate, and the moment it's their turn.
"use strict";
(() => {
  const id = location.pathname.split("/").pop();
  const token = new URLSearchParams(location.search).get("token") || "";
  const headers = { "X-Ticket-Token": token };
  const code = document.getElementById("code");
  const queue = document.getElementById("queue");
  const state = document.getElementById("state");
  const place = document.getElementById("place");
  const turn = document.getElementById("turn");
  const status = document.getElementById("status");
  let following = null;
  let queueId = null;
  let retries = 0;
  let retry = null;
  // Staff called this ticket again: said on the page for a minute, or until the ticket moves on.
  let recalled = null;  // { state: the state it was recalled in (null until read), timer }

  function forgetRecall() {
    if (recalled) clearTimeout(recalled.timer);
    recalled = null;
  }

  async function refresh() {
    clearTimeout(retry);
    try {
      const ticket = await VQ.api("/v1/public/tickets/" + id, { headers });
      retries = 0;
      code.textContent = ticket.display_code;
      queue.textContent = ticket.queue_name;
      state.textContent = ticket.current_state.replace(/_/g, " ");
      document.body.dataset.category = ticket.state_category;
      if (ticket.state_category !== "in_service" && ticket.state_category !== "ready") forgetRecall();
      leave.hidden = !ticket.can_leave;
      if (leave.hidden) resetLeave();
      if (ticket.state_category === "waiting") {
        const wait = ticket.show_wait_time && ticket.estimated_wait_minutes !== null ? " · " + VQ.waitText(ticket.estimated_wait_minutes) : "";
        place.textContent = (ticket.position === 1 ? "You are next" : "Number " + ticket.position + " in line") + wait;
        turn.textContent = "";
      } else if (ticket.state_category === "in_service" || ticket.state_category === "ready") {
        place.textContent = "";
        const go = ticket.counter ? " Please go to " + ticket.counter + "." : "";
        if (recalled && recalled.state === null) recalled.state = ticket.current_state;
        if (recalled && recalled.state !== ticket.current_state) forgetRecall();
        const again = recalled ? "You are being called again! " : "";
        turn.textContent = again + (ticket.state_category === "ready" ? "It's ready — it's your turn!" : "It's your turn!") + go;
      } else {
        place.textContent = "";
        turn.textContent = ticket.state_category === "done" ? "All done. Thank you!" : left ? "You left the line." : "This ticket was cancelled.";
      }
      status.textContent = "";
      if (queueId !== ticket.queue_id) {  // first load, or forwarded to another queue: follow that one
        queueId = ticket.queue_id;
        if (following) following.stop();
        following = VQ.follow("/v1/public/tickets/" + id + "/stream", headers, (type) => {
          if (type === "recalled") {
            forgetRecall();
            recalled = { state: null, timer: setTimeout(() => { forgetRecall(); refresh(); }, 60000) };
            if (navigator.vibrate) navigator.vibrate([300, 150, 300]);
          }
          later();
        }, {
          onOpen: (reconnected) => { if (reconnected) refresh(); },
          onDown: () => { status.textContent = "Reconnecting…"; },
        });
      }
    } catch (error) {
      if (error.status === 404 || error.status === 400) {  // a link cut short, or not this ticket's
        status.textContent = "This ticket link is not valid.";
        return;
      }
      status.textContent = VQ.problem(error, "ticket page");
      // Until the stream is followed (it resynchronises on reconnecting), the page asks again by itself:
      // a customer must not miss their turn because the first load failed.
      if (!following) {
        retries += 1;
        retry = setTimeout(refresh, Math.min(10000, 500 * 2 ** retries));
      }
    }
  }
  // Leaving takes two presses: "Leave the line", then "Yes, leave the line" (no dialog a kiosk could hide).
  // The second counts only after a moment (a double tap is one press), and the question lapses after 5 s.
  const leave = document.getElementById("leave");
  const CONFIRM_AFTER_MS = 600;
  const CONFIRM_FOR_MS = 5000;
  let left = false;
  let armed = null;  // { at: when the question was asked, timer }
  function resetLeave() {
    if (armed) clearTimeout(armed.timer);
    armed = null;
    leave.dataset.confirm = "";
    leave.textContent = "Leave the line";
  }
  window.addEventListener("pageshow", resetLeave);
  document.addEventListener("visibilitychange", resetLeave);
  leave.addEventListener("click", async () => {
    if (!armed) {
      armed = { at: Date.now(), timer: setTimeout(resetLeave, CONFIRM_FOR_MS) };
      leave.dataset.confirm = "1";
      leave.textContent = "Yes, leave the line";
      return;
    }
    if (Date.now() - armed.at < CONFIRM_AFTER_MS) return;
    leave.disabled = true;
    let problem = "";
    try {
      await VQ.api("/v1/public/tickets/" + id + "/leave", { method: "POST", headers });
      left = true;
    } catch (error) {
      problem = VQ.problem(error, "ticket page");  // called meanwhile, say: the page shows what is now
    }
    leave.disabled = false;
    resetLeave();
    await refresh();
    if (problem) status.textContent = problem;
  });

  const later = VQ.debounce(refresh, 30);
  refresh();
})();
