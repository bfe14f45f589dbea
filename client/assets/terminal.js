// The page's terminals: the built-in target's live sessions (read-only, fed over a
// WebSocket) and the recordings' player (asciicast v2 events replayed with their timing).
// Both draw with xterm.js (assets/xterm.js, embedded in the agent). No inline script.
"use strict";

function newTerminal(parent, cols, rows) {
  const term = new Terminal({
    cols: Math.max(2, cols || 80),
    rows: Math.max(1, rows || 24),
    disableStdin: true,
    cursorBlink: false,
    scrollback: 2000,
    fontFamily: "monospace",
  });
  term.open(parent);
  return term;
}

// One live view per open terminal, made when it appears in the state, gone when it ends.
// A button of the page: its classes, its words, and what a click does (given the button).
function newButton(className, text, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.textContent = text;
  button.addEventListener("click", () => onClick(button));
  return button;
}

const liveViews = new Map();

function watchTerminal(t, box) {
  const term = newTerminal(box, t.cols, t.rows);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/web/terminals/watch?id=${t.id}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const m = JSON.parse(ev.data);
      if (m.cols && m.rows) term.resize(m.cols, m.rows);
      if (m.skipped) term.write("\r\n[… output skipped: the page fell behind …]\r\n");
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = () => { box.dataset.ended = "true"; };
  return { term, ws };
}

// Called on every poll with the state's `terminals`; `stop(id)` posts the Stop.
function renderTerminals(terminals, stop) {
  const list = document.getElementById("live-list");
  document.getElementById("live").hidden = terminals.length === 0;
  const open = new Set(terminals.map((t) => t.id));
  for (const [id, view] of liveViews) {
    if (!open.has(id)) {
      view.ws.close();
      view.term.dispose();
      view.item.remove();
      liveViews.delete(id);
    }
  }
  for (const t of terminals) {
    let view = liveViews.get(t.id);
    if (!view) {
      const item = document.createElement("li");
      item.className = "live-item";
      item.dataset.terminal = String(t.id);
      const head = document.createElement("p");
      head.className = "live-who";
      const stopButton = newButton("danger stop-terminal", "Stop this session", () => stop(t.id));
      const box = document.createElement("div");
      box.className = "terminal";
      item.append(head, stopButton, box);
      list.appendChild(item);
      view = { item, head, ...watchTerminal(t, box) };
      liveViews.set(t.id, view);
    }
    const what = t.command ? `runs ${t.command}` : "has a shell";
    view.head.textContent = `${t.engineer} from ${t.from.replace(/:\d+$/, "")} ${what}, ` +
      `since ${new Date(t.started).toLocaleTimeString()}. You see what the engineer sees.`;
  }
}

// The player: parses an asciicast v2 file and writes its output events at their times.
const player = { term: null, events: [], next: 0, at: 0, timer: null, startedAt: 0 };

function playerButton() { return document.getElementById("player-toggle"); }

function playerStep() {
  player.timer = null;
  const now = (performance.now() - player.startedAt) / 1000;
  while (player.next < player.events.length && player.events[player.next][0] <= now) {
    const [, kind, data] = player.events[player.next++];
    if (kind === "o") player.term.write(data);
    if (kind === "r") {
      const m = /^(\d+)x(\d+)$/.exec(data);
      if (m) player.term.resize(Number(m[1]), Number(m[2]));
    }
  }
  if (player.next >= player.events.length) {
    playerButton().textContent = "Play again";
    player.at = null;
    document.getElementById("player").dataset.done = "true";
    return;
  }
  const wait = player.events[player.next][0] - now;
  player.timer = setTimeout(playerStep, Math.max(0, Math.min(wait, 5) * 1000));
}

function playerPlay() {
  if (player.at === null) {
    // From the start again.
    player.term.reset();
    player.next = 0;
    player.at = 0;
    document.getElementById("player").dataset.done = "false";
  }
  player.startedAt = performance.now() - player.at * 1000;
  playerButton().textContent = "Pause";
  playerStep();
}

function playerPause() {
  clearTimeout(player.timer);
  player.timer = null;
  player.at = (performance.now() - player.startedAt) / 1000;
  playerButton().textContent = "Play";
}

async function openRecording(rec) {
  const r = await fetch(`/web/recordings/file?name=${encodeURIComponent(rec.name)}`,
    { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) return;
  const lines = (await r.text()).split("\n").filter((l) => l.length > 0);
  const header = JSON.parse(lines[0]);
  const events = [];
  for (const l of lines.slice(1)) {
    try { events.push(JSON.parse(l)); } catch (e) { /* a torn last line */ }
  }
  if (player.term) { clearTimeout(player.timer); player.term.dispose(); }
  const box = document.getElementById("player-screen");
  box.replaceChildren();
  player.term = newTerminal(box, header.width, header.height);
  player.events = events;
  player.next = 0;
  player.at = 0;
  document.getElementById("player-title").textContent =
    `${rec.engineer || "an engineer"}, ${new Date(rec.start).toLocaleString()}`;
  document.getElementById("player").hidden = false;
  document.getElementById("player").dataset.done = "false";
  // xterm.js draws only what is in view.
  document.getElementById("player").scrollIntoView();
  playerPlay();
}

function setupPlayer() {
  playerButton().addEventListener("click", () => {
    if (!player.term) return;
    if (player.timer !== null) playerPause(); else playerPlay();
  });
}
