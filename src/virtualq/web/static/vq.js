// Shared helpers for the VirtualQ pages: the key, API calls, and an event stream that reconnects by itself.
"use strict";
const VQ = (() => {
  // A key arrives once in the URL fragment (#key=vq_...), which browsers never send to the server; it is kept
  // in this tab's sessionStorage and removed from the address bar.
  function takeKey(page) {
    const name = "vq-key-" + page;
    const fragment = new URLSearchParams(location.hash.slice(1));
    const given = fragment.get("key");
    if (given) {
      sessionStorage.setItem(name, given);
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(name);
  }

  async function api(path, { key, headers = {}, method = "GET", body } = {}) {
    const all = { ...headers };
    if (key) all.Authorization = "Bearer " + key;
    if (body !== undefined) all["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers: all, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new Error((data && data.message) || "Request failed (" + response.status + ")");
      error.status = response.status;
      error.code = data && data.error;
      throw error;
    }
    return data;
  }

  // Server-Sent Events over fetch (so the key travels in a header, not the URL). Reconnects with growing
  // pauses and resumes from the last event id; onOpen(reconnected) lets the page resynchronise. A key the
  // server refuses (401, 403) is not asked about again for a minute (a tenant may be reactivated, a proxy
  // may have refused): onRefused(error) says why.
  const REFUSED_RETRY_MS = 60000;
  function follow(path, headers, onEvent, { onOpen = () => {}, onDown = () => {}, onRefused = () => {} } = {}) {
    let lastId = null;
    let stopped = false;
    let attempt = 0;
    let controller = null;
    async function run() {
      while (!stopped) {
        controller = new AbortController();
        try {
          const all = { ...headers, Accept: "text/event-stream" };
          if (lastId) all["Last-Event-ID"] = lastId;
          const response = await fetch(path, { headers: all, signal: controller.signal, cache: "no-store" });
          if (response.status === 401 || response.status === 403) {
            const data = await response.json().catch(() => null);
            const error = new Error((data && data.message) || "the key was refused (" + response.status + ")");
            error.status = response.status;
            onRefused(error);
            attempt += 1;
            await new Promise((resolve) => setTimeout(resolve, REFUSED_RETRY_MS));
            continue;
          }
          if (!response.ok) throw new Error("stream refused: " + response.status);
          onOpen(attempt > 0);
          attempt = 0;
          const reader = response.body.getReader();
          // The server sends a heartbeat every 15 s: silence for 45 s means a dead connection.
          let watchdog = setTimeout(() => controller.abort(), 45000);
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            clearTimeout(watchdog);
            watchdog = setTimeout(() => controller.abort(), 45000);
            buffer += decoder.decode(value, { stream: true });
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const message = { id: null, event: "message", data: "" };
              for (const line of block.split("\n")) {
                if (line.startsWith(":")) continue;
                const colon = line.indexOf(": ");
                const field = colon < 0 ? line : line.slice(0, colon);
                const value = colon < 0 ? "" : line.slice(colon + 2);
                if (field === "id") message.id = value;
                else if (field === "event") message.event = value;
                else if (field === "data") message.data += value;
              }
              if (message.id) lastId = message.id;
              // "stream.gap" (events after our last id are gone) only comes at a reconnection, for which
              // onOpen(true) has just resynchronised the page: nothing more to do.
              if (message.event === "stream.gap") continue;
              if (message.data) onEvent(message.event, JSON.parse(message.data));
            }
          }
        } catch (error) {
          if (stopped) return;
        }
        onDown();
        attempt += 1;
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * attempt)));
      }
    }
    run();
    return { stop() { stopped = true; if (controller) controller.abort(); } };
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // What a page shows for an API error: a refused key says so and how to open the page again; an answer
  // from the server (a queue that does not exist, ...) is its message; no answer at all is the network.
  function problem(error, page) {
    if (error.status === 401 || error.status === 403) {
      return "This key was refused: " + error.message + ". Open the " + page + " again with a valid key (…#key=vq_…).";
    }
    if (error.status) return error.message.charAt(0).toUpperCase() + error.message.slice(1) + ".";
    return "Cannot reach the server; trying again…";
  }

  // A wait in words: "about 12 min", "about 1 h 15 min", "about 27 h"; under a minute "any minute now".
  // `short` for the wall: "~12 min", "~1 h 15", "~27 h", "soon".
  function waitText(minutes, short = false) {
    if (minutes === null || minutes === undefined) return "";
    const about = short ? "~" : "about ";
    if (minutes < 1) return short ? "soon" : "any minute now";
    if (minutes < 60) return about + minutes + " min";
    const hours = Math.floor(minutes / 60);
    const rest = Math.round((minutes % 60) / 5) * 5;
    if (minutes >= 600 || rest === 0) return about + Math.round(minutes / 60) + " h";
    if (rest === 60) return about + (hours + 1) + " h";
    return about + hours + " h " + rest + (short ? "" : " min");
  }

  return { takeKey, api, follow, el, debounce, problem, waitText };
})();
