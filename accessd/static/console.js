// accessd console: plain DOM, no framework. Every value from the server goes in through
// textContent or attributes, never innerHTML, so a person's name cannot inject markup.
"use strict";

let csrf = "";
let page = 0;
const PAGE = 20;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function say(text) {
  $("message").textContent = text;
  if (text) setTimeout(() => { if ($("message").textContent === text) $("message").textContent = ""; }, 6000);
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") init.headers["X-CSRF-Token"] = csrf;
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, init);
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `${r.status}`);
  return data;
}

// Tabs
for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll("nav button")) x.classList.toggle("active", x === b);
    for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === b.dataset.tab);
    refresh(b.dataset.tab);
  });
}

function refresh(tab) {
  if (tab === "decisions") loadDecisions();
  if (tab === "people") loadPeople();
  if (tab === "settings") loadSettings();
}

// Doors: one picker on the live page, one filter on the decisions page; hidden with a single door.
const door = () => $("live-door").value;
async function loadDoors() {
  const data = await api("GET", "/api/doors");
  for (const d of data.doors) {
    $("live-door").append(el("option", { value: d.name }, d.name));
    $("f-door").append(el("option", { value: d.name }, d.name));
  }
  for (const p of document.querySelectorAll(".door-picker")) p.hidden = data.doors.length < 2;
}
$("live-door").addEventListener("change", () => { $("status").replaceChildren(); });

// Live: a new JPEG every 300 ms (one request at a time), and the status.
let liveUrl = null;
async function liveLoop() {
  try {
    const r = await fetch(`/api/live.jpg?door=${encodeURIComponent(door())}`, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.href = "/login"; return; }
    if (r.ok) {
      const url = URL.createObjectURL(await r.blob());
      $("live-frame").src = url;
      $("live-frame").dataset.seq = r.headers.get("X-Frame-Seq") || "";
      if (liveUrl) URL.revokeObjectURL(liveUrl);
      liveUrl = url;
    }
  } catch (e) { /* the daemon restarting: try again */ }
  setTimeout(liveLoop, 300);
}

async function statusLoop() {
  try {
    const s = await api("GET", `/api/status?door=${encodeURIComponent(door())}`);
    const dl = $("status");
    dl.replaceChildren();
    for (const [k, v] of Object.entries(s)) dl.append(el("dt", {}, k.replaceAll("_", " ")), el("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v)));
  } catch (e) { /* shown on the next try */ }
  setTimeout(statusLoop, 2000);
}

// Decisions
async function loadDecisions() {
  const q = new URLSearchParams({ limit: PAGE, offset: page * PAGE });
  if ($("f-door").value) q.set("door", $("f-door").value);
  if ($("f-outcome").value) q.set("outcome", $("f-outcome").value);
  if ($("f-person").value) q.set("person", $("f-person").value);
  if ($("f-since").value) q.set("since", new Date($("f-since").value).toISOString());
  const data = await api("GET", `/api/decisions?${q}`);
  const rows = $("decision-rows");
  rows.replaceChildren();
  for (const d of data.decisions) {
    const snap = d.id ? el("img", { src: `/api/snapshots/${encodeURIComponent(d.id)}`, alt: "snapshot" }) : "";
    const action = el("td");
    if (d.id && d.decision === "deny") {
      const b = el("button", { class: "enrol" }, "enrol as…");
      // No name suggested: the closest enrolled person is exactly the wrong guess to make easy.
      b.addEventListener("click", () => enrolFromSnapshot(d.id));
      action.append(b);
    }
    rows.append(el("tr", { "data-id": d.id || "" },
      el("td", {}, d.ts), el("td", {}, d.door || "door"), el("td", { class: d.decision }, d.decision), el("td", {}, d.person || (d.closest ? (d.decision === "spoof_suspected" ? `looked like ${d.closest}` : `unknown (closest: ${d.closest})`) : "-")),
      el("td", {}, Number(d.score).toFixed(3)), el("td", {}, d.reason || ""), el("td", {}, snap), action));
  }
  $("page").textContent = ` ${page * PAGE + 1}-${page * PAGE + data.decisions.length}${data.more ? "" : " (end)"} `;
  $("next").disabled = !data.more;
}

async function enrolFromSnapshot(id) {
  const person = prompt("Add this snapshot to whose photos? (a new or existing person)", "");
  if (!person) return;
  try {
    await api("POST", `/api/decisions/${encodeURIComponent(id)}/enrol`, { person });
    say(`added to ${person}; live within seconds`);
  } catch (e) { say(`not enrolled: ${e.message}`); }
}

$("decision-filter").addEventListener("submit", (e) => { e.preventDefault(); page = 0; loadDecisions(); });
$("prev").addEventListener("click", () => { if (page > 0) { page--; loadDecisions(); } });
$("next").addEventListener("click", () => { page++; loadDecisions(); });

// People
async function upload(person, files) {
  for (const f of files) {
    const fd = new FormData();
    fd.append("file", f);
    try { await api("POST", `/api/people/${encodeURIComponent(person)}/photos`, fd); say(`${f.name} added to ${person}`); }
    catch (e) { say(`${f.name}: ${e.message}`); }
  }
  setTimeout(loadPeople, 2500);  // the gallery picks new photos up within 2 s
}

function personCard(p) {
  const photos = el("div", { class: "photos" });
  for (const ph of p.photos) {
    const src = `/api/people/${encodeURIComponent(p.person)}/photos/${encodeURIComponent(ph.photo)}`;
    const del = el("button", { class: "delete" }, "delete");
    del.addEventListener("click", async () => {
      if (!confirm(`Delete ${ph.photo} of ${p.person}?`)) return;
      try { await api("DELETE", src); say(`deleted ${ph.photo}`); } catch (e) { say(e.message); }
      setTimeout(loadPeople, 2500);
    });
    photos.append(el("div", { class: ph.status === "in use" || ph.status === "pending" ? "photo" : "photo bad", "data-photo": ph.photo },
      el("img", { src, alt: ph.photo, title: ph.reason || ph.status }), el("br"), el("span", { class: "status" }, ph.status), el("br"), del));
  }
  const input = el("input", { type: "file", accept: "image/*", multiple: "" });
  input.addEventListener("change", () => upload(p.person, input.files));
  const drop = el("div", { class: "drop" }, "drop photos here, or ", input);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(p.person, e.dataTransfer.files); });
  const remove = el("button", { class: "remove" }, "remove person");
  remove.addEventListener("click", async () => {
    if (!confirm(`Remove ${p.person} and all their photos?`)) return;
    try { await api("DELETE", `/api/people/${encodeURIComponent(p.person)}`); say(`removed ${p.person}`); } catch (e) { say(e.message); }
    setTimeout(loadPeople, 2500);
  });
  return el("div", { class: "person", "data-person": p.person },
    el("h2", {}, `${p.person} (${p.in_use} of ${p.photos.length} photos in use) `, remove), photos, drop);
}

async function loadPeople() {
  const data = await api("GET", "/api/people");
  $("people-list").replaceChildren(...data.people.map(personCard));
}

$("add-person").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("new-person").value.trim();
  if (!name) return;
  // A person exists once they have a photo: show an empty card to drop photos on.
  $("people-list").prepend(personCard({ person: name, photos: [], in_use: 0 }));
  $("new-person").value = "";
});

$("check").addEventListener("click", async () => {
  $("flags").replaceChildren(el("li", {}, "checking…"));
  try {
    const data = await api("GET", "/api/check");
    $("flags").replaceChildren(...(data.flags.length ? data.flags.map((f) => el("li", { class: "flag" },
      `${f.person}/${f.photo}: ${f.problem} (score ${f.score.toFixed(3)})`)) : [el("li", {}, "no photo flagged")]));
  } catch (e) { $("flags").replaceChildren(el("li", {}, e.message)); }
});

// Verify
$("verify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const r = await api("POST", "/api/verify", new FormData(e.target));
    $("verify-result").textContent = `score ${r.score.toFixed(3)}: ${r.match ? "match" : "no match"} at the threshold ${r.threshold}`;
  } catch (err) { $("verify-result").textContent = err.message; }
});

// Thresholds
async function loadSettings() {
  const data = await api("GET", `/api/settings?door=${encodeURIComponent(door())}`);
  const dl = $("settings-list");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(data.settings)) dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  const c = $("scores").getContext("2d");
  const W = c.canvas.width, H = c.canvas.height, bins = 40;
  c.clearRect(0, 0, W, H);
  const hist = { verified: new Array(bins).fill(0), refused: new Array(bins).fill(0) };
  for (const [kind, score] of data.recent) hist[kind][Math.min(bins - 1, Math.floor(score * bins))]++;
  const top = Math.max(1, ...hist.verified, ...hist.refused);
  const bw = W / bins;
  for (const [kind, colour] of [["refused", "rgba(198,40,40,.6)"], ["verified", "rgba(46,125,50,.6)"]]) {
    c.fillStyle = colour;
    hist[kind].forEach((n, i) => c.fillRect(i * bw, H - 20 - (H - 30) * n / top, bw - 1, (H - 30) * n / top));
  }
  const t = data.settings.detection_threshold;
  c.fillStyle = "#000";
  c.fillRect(t * W, 0, 2, H - 20);
  c.fillText(`threshold ${t}`, Math.min(t * W + 4, W - 90), 12);
  c.fillText("0", 0, H - 6); c.fillText("score 1", W - 40, H - 6);
}

$("logout").addEventListener("click", async () => { await api("POST", "/logout"); location.href = "/login"; });

(async () => {
  csrf = (await api("GET", "/api/session")).csrf || "";
  await loadDoors();
  liveLoop();
  statusLoop();
})();
