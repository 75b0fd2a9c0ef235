// The labeling page: sign in with a token, lease tasks, answer by keyboard, skip, undo the last answer.
// A preference project's task shows the prompt on top and its two responses side by side (keys A, B, T;
// with Shift, "much better"), and an optional reason sent with the answer.
// The last answer waits (PENDING_MS, or until the next answer) before it is sent, so it can be undone
// while its task is still this annotator's; leases are kept alive while the page is open.
"use strict";

const PENDING_MS = 4000;
const HEARTBEAT_MS = 60000;
const POLL_MS = 5000;
const LEASE_BATCH = 10;

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("winnow-token"), project: new URLSearchParams(location.search).get("project"),
                me: null, queue: [], current: null, pending: null, active: 0, answered: 0 };

async function api(path, body) {
  const url = path + (state.project ? `?project=${encodeURIComponent(state.project)}` : "");
  const response = await fetch(url, {
    method: body === undefined ? "GET" : "POST",
    headers: { "Authorization": `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function show(id) {
  for (const section of ["signin", "work", "empty"]) $(section).hidden = section !== id;
}

function say(message) { $("error").textContent = message || ""; }

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api("/api/me");
  } catch (error) {
    sessionStorage.removeItem("winnow-token");
    $("signin-error").textContent = error.status === 401 ? "That token is unknown, expired or revoked." : error.message;
    show("signin");
    return;
  }
  sessionStorage.setItem("winnow-token", token);
  state.project = state.me.project;
  $("who").textContent = `${state.me.name} · ${state.me.project}`;
  $("guideline").textContent = `Guideline version ${state.me.guideline_version}` +
    (state.me.guideline ? " (open to read)" : "");
  $("guideline-text").textContent = state.me.guideline || "No guideline text was given for this project.";
  state.answered = state.me.answers;
  progress();
  next();
}

function progress() {
  const gold = state.me && state.me.gold_accuracy !== null && state.me.gold_accuracy !== undefined
    ? ` · gold accuracy ${(100 * state.me.gold_accuracy).toFixed(0)}%` : "";
  $("progress").textContent = `${state.answered} answered${gold}`;
}

async function next() {
  if (!state.queue.length) {
    try {
      state.queue = (await api("/api/lease", { max_tasks: LEASE_BATCH })).leases
        .filter((lease) => !state.pending || lease.item_id !== state.pending.task.item_id);
    } catch (error) {
      say(error.message);
      if (error.status === 401) return show("signin");
    }
  }
  state.current = state.queue.shift() || null;
  if (!state.current) {
    show("empty");
    setTimeout(() => { if (!state.current) next(); }, POLL_MS);
    return;
  }
  render();
}

function render() {
  const task = state.current;
  show("work");
  $("kind").textContent = task.kind === "gold" ? "known answer (measures you)" : task.kind === "label" ? "" : task.kind;
  $("text").textContent = task.text;
  const pair = state.me.kind === "preference";
  $("pair").hidden = !pair;
  $("search").hidden = pair;  // three answers: no filter
  $("pair-keys").hidden = !pair;
  $("class-keys").hidden = pair;
  if (pair) {
    $("response-a").textContent = task.responses[0].text;
    $("response-b").textContent = task.responses[1].text;
  }
  $("suggestion").hidden = !task.suggestion;  // never on holdout, audit or gold tasks: the server sends none
  $("suggestion").textContent = task.suggestion ? `Model suggests: ${task.suggestion}` : "";
  $("search").value = "";
  state.active = 0;
  renderClasses();
  $("search").focus();
}

function visibleClasses() {
  const query = $("search").value.trim().toLowerCase();
  return state.me.classes.filter((name) => !query || name.toLowerCase().includes(query));
}

function renderClasses() {
  const list = $("classes");
  list.replaceChildren();
  visibleClasses().forEach((name, index) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.label = name;
    button.className = index === state.active ? "active" : "";
    const number = document.createElement("span");
    number.className = "n";
    number.textContent = index < 9 ? String(index + 1) : "·";
    button.append(number, name);
    button.addEventListener("click", () => answer(name));
    item.append(button);
    list.append(item);
  });
}

async function send(pending) {
  clearTimeout(pending.timer);
  try {
    await api("/api/submit", { item_id: pending.task.item_id, label: pending.label,
                               strength: pending.strength || "", reason: pending.reason || "" });
    state.answered += 1;
    if (state.answered % 20 === 0) state.me = { ...state.me, ...(await api("/api/me")) };
    progress();
  } catch (error) {
    say(`Your answer on "${pending.task.text.slice(0, 40)}" was not recorded: ${error.message}`);
  }
}

async function flush() {
  const pending = state.pending;
  state.pending = null;
  $("undo").disabled = true;
  $("pending").textContent = "";
  if (pending) await send(pending);
}

async function answer(label, strength) {
  if (!state.current) return;
  say("");
  await flush();  // the answer before this one is final now
  const task = state.current;
  const reason = state.me.kind === "preference" ? $("reason").value.trim() : "";
  $("reason").value = "";
  state.pending = { task, label, strength: strength || "", reason, timer: setTimeout(flush, PENDING_MS) };
  $("undo").disabled = false;
  $("pending").textContent = `Answered "${label}"${strength ? ` (${strength} better)` : ""}. Ctrl+Z to undo.`;
  state.current = null;
  next();
}

function undo() {
  const pending = state.pending;
  if (!pending) return;
  clearTimeout(pending.timer);
  state.pending = null;
  $("undo").disabled = true;
  $("pending").textContent = "";
  if (state.current) state.queue.unshift(state.current);
  state.current = pending.task;
  render();
  $("reason").value = pending.reason || "";
}

async function skip() {
  if (!state.current) return;
  const task = state.current;
  state.current = null;
  try {
    await api("/api/skip", { item_id: task.item_id });
  } catch (error) {
    say(error.message);
  }
  next();
}

async function heartbeat() {
  const ids = [state.current, ...state.queue, state.pending && state.pending.task].filter(Boolean).map((t) => t.item_id);
  if (ids.length && state.token) {
    try { await api("/api/heartbeat", { item_ids: ids }); } catch (error) { say(error.message); }
  }
}

document.addEventListener("keydown", (event) => {
  if ($("work").hidden) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    return undo();
  }
  if (event.key === "Escape") { event.preventDefault(); return skip(); }
  if (event.target === $("reason")) {  // typing a reason: Enter ends it, and the keys answer again
    if (event.key === "Enter") { event.preventDefault(); $("reason").blur(); }
    return;
  }
  const pairKey = { a: "A", b: "B", t: "tie" }[event.key.toLowerCase()];
  if (state.me.kind === "preference" && pairKey && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    return answer(pairKey, event.shiftKey && pairKey !== "tie" ? "much" : "");
  }
  const options = visibleClasses();
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    state.active = Math.max(0, Math.min(options.length - 1, state.active + (event.key === "ArrowDown" ? 1 : -1)));
    return renderClasses();
  }
  if (event.key === "Enter") {
    event.preventDefault();
    if (options[state.active]) answer(options[state.active]);
    return;
  }
  if (/^[1-9]$/.test(event.key) && $("search").value === "") {
    event.preventDefault();
    const chosen = options[Number(event.key) - 1];
    if (chosen) answer(chosen);
  }
});
$("search").addEventListener("input", () => { state.active = 0; renderClasses(); });
$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("signin").addEventListener("submit", (event) => { event.preventDefault(); signIn($("token").value.trim()); });
window.addEventListener("beforeunload", () => { if (state.pending) send(state.pending); });
setInterval(heartbeat, HEARTBEAT_MS);

if (state.token) signIn(state.token); else show("signin");
