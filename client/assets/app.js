// The customer's page: polls /web/state every second and posts changes with the session's
// CSRF token. No inline script (the CSP forbids it); the only third-party code is xterm.js,
// served by the agent itself (terminal.js draws with it).
"use strict";

const CHOICES = [15, 30, 60, 120, 240, 480];
let csrf = "";
let maxSeconds = null;
let last = null;
const $ = (id) => document.getElementById(id);

function show(el, on) { el.hidden = !on; }

function fillMinutes(select) {
  const keep = select.value;
  const limit = maxSeconds ? Math.max(1, Math.floor(maxSeconds / 60)) : null;
  const mins = CHOICES.filter((m) => limit === null || m <= limit);
  if (limit !== null && !mins.includes(limit)) mins.push(limit);
  const key = mins.join(",");
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  select.replaceChildren(...mins.map((m) => {
    const o = document.createElement("option");
    o.value = String(m);
    o.textContent = m < 60 ? `${m} minutes` : (m % 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m / 60} hour${m === 60 ? "" : "s"}`);
    return o;
  }));
  select.value = mins.includes(Number(keep)) ? keep : String(mins.includes(60) ? 60 : mins[mins.length - 1]);
}

function duration(secs) {
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

function localTime(rfc) { return rfc ? new Date(rfc).toLocaleTimeString() : ""; }
function clock(rfc) { return rfc ? new Date(rfc).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : ""; }

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

const TUNNEL = {
  disabled: "The connection to the support center is closed.",
  connecting: "Connecting to the support center…",
  connected: "Connected to the support center, waiting for the engineer.",
  reconnecting: "Connection to the support center lost; trying again.",
  failed: "The connection to the support center failed.",
};

function render(st) {
  last = st;
  csrf = st.csrf;
  if (st.max_seconds) maxSeconds = st.max_seconds;
  show($("login"), false);
  show($("app"), true);
  $("serial").textContent = `This machine: ${st.serial}`;
  const state = $("state");
  state.textContent = st.enabled ? "Remote assistance is ON" : "Remote assistance is OFF";
  state.className = st.enabled ? "state on" : "state";
  const cd = $("countdown");
  show(cd, st.enabled);
  if (st.enabled) {
    cd.textContent = `Until ${localTime(st.until)} — ${duration(st.remaining_secs || 0)} left`;
  }
  let t = TUNNEL[st.tunnel.state] || st.tunnel.state;
  if (st.tunnel.state === "connected" && st.connections.active > 0) t = "Connected to the support center.";
  if (st.tunnel.last_error) t += ` Reason: ${st.tunnel.last_error}`;
  $("tunnel").textContent = t;

  show($("code-box"), st.enabled && !!st.code);
  show($("code-elsewhere"), st.enabled && !st.code);
  if (st.code) $("code").textContent = st.code;
  show($("enable-form"), !st.enabled);
  show($("on-controls"), st.enabled);
  fillMinutes($("minutes"));
  fillMinutes($("extend-minutes"));

  const c = st.connections;
  const sessions = c.sessions || [];
  const open = sessions.filter((s) => !s.ended);
  let who;
  if (c.active > 0) {
    // "alice (vendor key 'alice@laptop') from 203.0.113.5 → ssh, since 14:02", one per
    // open connection; the name is the jump host's word, the address when it sent none.
    who = "Connected now: " + open.map((s) => {
      const from = s.originator ? s.originator.replace(/:\d+$/, "") : "";
      const name = s.engineer || "a support engineer";
      return `${name}${from ? ` from ${from}` : ""}${s.service ? ` → ${s.service}` : ""}, since ${clock(s.since)}`;
    }).join("; ") + ".";
  } else {
    who = st.enabled ? "No support engineer is connected right now." : "Nobody can connect while assistance is off.";
  }
  $("engineer").textContent = who;
  renderApprovals(st);
  renderTerminals(st.terminals || [], (id) => post("/web/terminals/stop", { id }));
  show($("history"), sessions.length > 0);
  $("history-rows").replaceChildren(...sessions.slice().reverse().map((s) => {
    const tr = document.createElement("tr");
    for (const v of [s.engineer || "—", s.service || "—", s.originator || "—", localTime(s.since),
      s.ended ? localTime(s.ended) : `open, ${duration(Math.max(0, Math.floor((Date.now() - new Date(s.since)) / 1000)))}`,
      `↓${bytes(s.bytes_to_engineer)} ↑${bytes(s.bytes_from_engineer)}`]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    return tr;
  }));
}

// Connections waiting for the customer's Allow / Deny (approve_connections).
function renderApprovals(st) {
  const waiting = st.approvals || [];
  show($("approvals"), waiting.length > 0);
  const key = waiting.map((a) => `${a.id}:${a.engineer || ""}`).join(",");
  const list = $("approval-list");
  if (list.dataset.key !== key) {
    list.dataset.key = key;
    list.replaceChildren(...waiting.map((a) => {
      const li = document.createElement("li");
      li.dataset.approval = String(a.id);
      const text = document.createElement("span");
      text.className = "approval-who";
      const answer = (verdict) => (button) =>
        busy(button, () => post("/web/approve", { id: a.id, answer: verdict }));
      const allow = newButton("primary allow", "Allow", answer("allow"));
      const deny = newButton("danger deny", "Deny", answer("deny"));
      li.append(text, allow, deny);
      return li;
    }));
  }
  for (const a of waiting) {
    const li = list.querySelector(`[data-approval="${a.id}"] .approval-who`);
    if (li) {
      li.textContent = `${a.engineer || "A support engineer"} from ${a.from.replace(/:\d+$/, "")} asks to ` +
        `connect to ${a.service} (${a.seconds_left} s left to answer). `;
    }
  }
}

// The recordings of the built-in target: read at login, when a live session ends, and
// every half minute.
let recordingsKey = null;
let recordingsRead = 0;
async function loadRecordings(terminalCount) {
  const key = String(terminalCount);
  if (recordingsKey === key && Date.now() - recordingsRead < 30000) return;
  recordingsKey = key;
  recordingsRead = Date.now();
  const r = await fetch("/web/recordings", { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) return;
  const list = await r.json();
  show($("recordings-empty"), list.length === 0);
  show($("recordings-table"), list.length > 0);
  $("recordings-rows").replaceChildren(...list.map((rec) => {
    const tr = document.createElement("tr");
    tr.dataset.recording = rec.name;
    const what = rec.command ? ` (${rec.command})` : "";
    for (const v of [`${rec.engineer || "—"}${what}`, rec.from ? rec.from.replace(/:\d+$/, "") : "—",
      new Date(rec.start).toLocaleString(), duration(Math.round(rec.duration_secs)), bytes(rec.size)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const actions = document.createElement("td");
    const play = newButton("play", "Play", () => openRecording(rec));
    const del = newButton("danger delete-recording", "Delete", async () => {
      if (!confirm("Delete this recording for good?")) return;
      if (await post("/web/recordings/delete", { name: rec.name }) !== null) {
        recordingsKey = null;
        await loadRecordings(terminalCount);
      }
    });
    actions.append(play, del);
    tr.appendChild(actions);
    return tr;
  }));
}

// The past windows change only when a window ends: read them at login and whenever the
// state flips.
let pastFor = null;
async function loadPast(enabled) {
  if (pastFor === enabled) return;
  pastFor = enabled;
  const r = await fetch("/web/history", { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) return;
  const windows = await r.json();
  show($("past-empty"), windows.length === 0);
  $("past").replaceChildren(...windows.map((w) => {
    const li = document.createElement("li");
    const head = document.createElement("p");
    const by = w.user ? `${w.by} by ${w.user}` : w.by;
    head.textContent = `${new Date(w.start).toLocaleString()} – ${localTime(w.end)}: enabled on the ${by}` +
      `${w.extended ? `, extended ${w.extended}×` : ""}; ${w.reason}.`;
    li.appendChild(head);
    const list = document.createElement("ul");
    if (w.connections.length === 0) {
      const none = document.createElement("li");
      none.textContent = "Nobody connected.";
      list.appendChild(none);
    }
    for (const c of w.connections) {
      const item = document.createElement("li");
      const from = c.source ? ` from ${c.source.replace(/:\d+$/, "")}` : "";
      item.textContent = `${c.engineer || "a support engineer"}${from}${c.service ? ` → ${c.service}` : ""}, ` +
        `${localTime(c.start)}–${c.end ? localTime(c.end) : "?"}, ↓${bytes(c.bytes_to_engineer)} ↑${bytes(c.bytes_from_engineer)}` +
        `${c.how ? ` (${c.how})` : ""}`;
      list.appendChild(item);
    }
    li.appendChild(list);
    return li;
  }));
}

async function poll() {
  try {
    const r = await fetch("/web/state", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      show($("app"), false);
      show($("login"), true);
      return;
    }
    if (r.ok) {
      const st = await r.json();
      render(st);
      await loadPast(st.enabled);
      await loadRecordings((st.terminals || []).length);
    }
  } catch (e) {
    $("tunnel").textContent = "The agent is not answering.";
  }
}

async function post(path, body) {
  $("error").textContent = "";
  $("notice").textContent = "";
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body || {}),
  });
  let answer = {};
  try { answer = await r.json(); } catch (e) { /* empty body (204) */ }
  if (!r.ok) {
    $("error").textContent = answer.error || `Request failed (${r.status})`;
    return null;
  }
  if (answer.max_seconds) maxSeconds = answer.max_seconds;
  await poll();
  return answer;
}

async function busy(button, work) {
  button.disabled = true;
  try { await work(); } finally { button.disabled = false; }
}

document.addEventListener("DOMContentLoaded", () => {
  setupPlayer();
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch("/web/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("token").value }),
    });
    $("token").value = "";
    if (r.ok) { await poll(); } else { $("login-error").textContent = "Wrong access key."; }
  });
  $("enable-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("enable"), () => post("/web/enable", { minutes: Number($("minutes").value) }));
  });
  $("extend-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("extend"), async () => {
      const a = await post("/web/extend", { minutes: Number($("extend-minutes").value) });
      if (!a) return;
      const kept = a.connections_kept;
      $("notice").textContent = `Extended until ${localTime(a.until)}. The code stays the same` +
        (kept ? ` and the ${kept} open session${kept === 1 ? "" : "s"} go${kept === 1 ? "es" : ""} on.` : ".");
    });
  });
  $("new-code").addEventListener("click", () => {
    if (!confirm("A new code ends the open sessions and the old code stops working. Continue?")) return;
    busy($("new-code"), () => post("/web/enable", { minutes: Number($("extend-minutes").value) }));
  });
  $("stop").addEventListener("click", () => busy($("stop"), () => post("/web/disable")));
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("code").textContent);
      $("copied").textContent = "Copied.";
    } catch (e) {
      $("copied").textContent = "Select the code and copy it by hand.";
    }
  });
  // An access key passed in the address fragment (never sent to a server) logs in once,
  // before the first poll, so the login form never flashes up for a link that works.
  const m = location.hash.match(/^#token=([0-9a-f]+)$/);
  let ready = Promise.resolve();
  if (m) {
    history.replaceState(null, "", "/");
    ready = fetch("/web/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: m[1] }),
    }).then((r) => {
      if (!r.ok) {
        $("login-error").textContent =
          "The access key in this link is no longer valid (the agent restarted): run " +
          "`assist-client page` again or enter the key.";
      }
    }).catch(() => {});
  }
  ready.then(() => {
    poll();
    setInterval(poll, 1000);
  });
});
