// Self-service join: a queue's public form (a QR code on the door, or a kiosk with ?kiosk=1).
// On a phone, joining opens the customer's own ticket page. On a kiosk, the number is shown for a while
// and the form is ready for the next customer.
"use strict";
(() => {
  const token = location.pathname.split("/").pop();
  const kiosk = new URLSearchParams(location.search).get("kiosk") === "1";
  const KIOSK_SHOW_MS = 15000;
  const form = document.getElementById("form");
  const fieldsBox = document.getElementById("fields");
  const heading = document.getElementById("queue");
  const line = document.getElementById("line");
  const status = document.getElementById("status");
  const joined = document.getElementById("joined");
  const button = document.getElementById("join");
  let fields = [];
  let reset = null;
  let attempt = null;  // the Idempotency-Key of this filled-in form: a retry after a lost answer joins once

  function randomKey() {  // crypto.randomUUID needs HTTPS; this works on any page
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function describeLine(info) {
    const waiting = info.waiting === 0 ? "Nobody is waiting" : info.waiting === 1 ? "1 person is waiting" : info.waiting + " people are waiting";
    const wait = info.show_wait_time && info.estimated_wait_minutes !== null ? " · " + VQ.waitText(info.estimated_wait_minutes) : "";
    return waiting + wait;
  }

  function input(field) {
    const label = document.createElement("label");
    label.append(field.title + " ");
    let control;
    if (field.kind === "choice") {
      control = document.createElement("select");
      const blank = document.createElement("option");
      blank.value = "";
      blank.textContent = "Choose…";
      control.append(blank);
      field.choices.forEach((choice, index) => {
        const option = document.createElement("option");
        option.value = String(index);
        option.textContent = String(choice);
        control.append(option);
      });
    } else if (field.kind === "boolean") {
      control = document.createElement("input");
      control.type = "checkbox";
    } else {
      control = document.createElement("input");
      if (field.kind === "integer" || field.kind === "number") {
        control.type = "number";
        control.step = field.kind === "integer" ? "1" : "any";
        if (field.minimum !== null && field.minimum !== undefined) control.min = field.minimum;
        if (field.maximum !== null && field.maximum !== undefined) control.max = field.maximum;
      } else if (field.max_length) {
        control.maxLength = field.max_length;
      }
    }
    control.dataset.field = field.name;
    label.append(control);
    return label;
  }

  function value(field) {
    const control = fieldsBox.querySelector('[data-field="' + CSS.escape(field.name) + '"]');
    if (field.kind === "boolean") return control.checked;
    if (control.value === "") return undefined;
    if (field.kind === "choice") return field.choices[Number(control.value)];
    if (field.kind === "integer" || field.kind === "number") return Number(control.value);
    return control.value;
  }

  async function load() {
    try {
      const info = await VQ.api("/v1/public/join/" + encodeURIComponent(token));
      heading.textContent = info.queue_name;
      line.textContent = describeLine(info);
      if (!info.accepting) {
        form.hidden = true;
        status.textContent = "This line is not taking sign-ins right now.";
        return;
      }
      if (!fields.length || fieldsBox.childElementCount !== info.fields.length) {
        fields = info.fields;
        fieldsBox.replaceChildren(...fields.map(input));
      }
      form.hidden = false;
      status.textContent = "";
    } catch (error) {
      form.hidden = true;
      status.textContent = error.status === 404 ? "This join link is not in use." : VQ.problem(error, "join page");
    }
  }

  function text(id) {
    const given = document.getElementById(id).value.trim();
    return given === "" ? null : given;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const custom = {};
    for (const field of fields) {
      const given = value(field);
      if (given === undefined) {
        status.textContent = "Please fill in " + field.title + ".";
        return;
      }
      custom[field.name] = given;
    }
    button.disabled = true;
    status.textContent = "";
    try {
      attempt = attempt || randomKey();
      const ticket = await VQ.api("/v1/public/join/" + encodeURIComponent(token), {
        method: "POST",
        headers: { "Idempotency-Key": attempt },
        body: { fname: text("fname"), lname: text("lname"), custom_data: custom },
      });
      attempt = null;
      if (!kiosk) {
        location.assign(ticket.customer_page);
        return;
      }
      form.hidden = true;
      joined.hidden = false;
      document.getElementById("code").textContent = ticket.display_code;
      document.getElementById("place").textContent = ticket.position === 1 ? "You are next" : "Number " + ticket.position + " in line";
      reset = setTimeout(next, KIOSK_SHOW_MS);
    } catch (error) {
      status.textContent = error.status === 429 ? "Too many sign-ins from here; please wait a moment." : VQ.problem(error, "join page");
    } finally {
      button.disabled = false;
    }
  });

  function next() {
    clearTimeout(reset);
    form.reset();
    joined.hidden = true;
    load();
  }
  form.addEventListener("input", () => { status.textContent = ""; attempt = null; });
  document.getElementById("next").addEventListener("click", next);
  load();
})();
