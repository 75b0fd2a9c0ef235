// The reviewer page: the project's budget and certified quality, each annotator's measured accuracy,
// and the items where people disagree with each other or with a confident model. Refreshes every minute
// (each read of the disagreements is in the audit trail).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("winnow-token"), project: new URLSearchParams(location.search).get("project") };
const pct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)}%`);

async function load() {
  const url = "/api/review" + (state.project ? `?project=${encodeURIComponent(state.project)}` : "");
  const response = await fetch(url, { headers: { "Authorization": `Bearer ${state.token}` } });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    $("signin-error").textContent = response.status === 401 ? "That token is unknown, expired or revoked." : data.error;
    $("report").hidden = true;
    $("signin").hidden = false;
    return;
  }
  sessionStorage.setItem("winnow-token", state.token);
  $("signin").hidden = true;
  $("report").hidden = false;
  render(data);
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value] of pairs) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    dl.append(dt, dd);
  }
}

function rows(table, cells) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const row of cells) {
    const tr = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    }
    body.append(tr);
  }
}

// A select of the classes and a button that records the chosen one as the item's gold answer.
function goldControl(itemId, classes, preset) {
  const box = document.createElement("span");
  const select = document.createElement("select");
  select.setAttribute("aria-label", `gold answer for ${itemId}`);
  for (const name of classes) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    option.selected = name === preset;
    select.append(option);
  }
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "set gold";
  button.addEventListener("click", async () => {
    const response = await fetch("/api/gold" + (state.project ? `?project=${encodeURIComponent(state.project)}` : ""), {
      method: "POST", headers: { "Authorization": `Bearer ${state.token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ item_id: itemId, label: select.value }),
    });
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    $("error").textContent = response.ok ? "" : `${itemId}: ${data.error}`;
    if (response.ok) load();
  });
  box.append(select, " ", button);
  return box;
}

function render(data) {
  $("who").textContent = `${data.name} · ${data.project}`;
  const humans = data.labels_by_source.human || 0;
  facts($("facts"), [
    ["items", data.items], ["stream", data.stream], ["open tasks", data.open_tasks],
    ["human labels", `${humans} (${pct(data.human_fraction)} of items; budget ${data.budget.labels} per ${data.budget.per_items})`],
    ["model labels", data.labels_by_source.model || 0], ["gold items", data.gold_items],
    ["model version", data.model_version || "none yet"], ["threshold", data.threshold === null ? "-" : data.threshold.toFixed(3)],
  ]);
  const q = data.quality;
  facts($("quality"), [
    ["accuracy of all final labels, at least", pct(q.accuracy_lower_bound)],
    ["precision of auto-accepted labels, at least", pct(q.auto_accepted_precision_lower_bound)],
    ["auto-accepted", q.auto_accepted], ["audits (pending)", `${q.audits} (${q.audits_pending})`],
    ["human error", `${q.human_error}, at most ${pct(q.human_error_rate_upper)}`], ["confidence", pct(q.confidence)],
  ]);
  rows($("annotators"), data.annotators.map((a) => [a.name, a.answers, pct(a.gold_accuracy), pct(a.estimated_accuracy)]));
  rows($("disagreements"), data.disagreements.map((d) => [
    d.item_id, Object.entries(d.answers).map(([who, label]) => `${who}: ${label}`).join(", "),
    d.model_label || "-", d.final_label || "(open)", goldControl(d.item_id, data.classes, d.final_label)]));
  $("gold-total").textContent = `${data.gold_items} gold item${data.gold_items === 1 ? "" : "s"}` + (data.gold.length < data.gold_items
    ? `; the ${data.gold.length} most missed shown` : "");
  rows($("gold"), data.gold.map((g) => [g.item_id, g.text, g.label,
    g.answers ? `${g.matched} of ${g.answers} (${pct(g.matched / g.answers)})` : "not answered yet"]));
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  load();
});
if (state.token) load(); else $("signin").hidden = false;
setInterval(() => { if (!$("report").hidden) load(); }, 60000);
