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

// The door's face-unlock switch and its code box (a kiosk beside the door, or someone on the phone).
let faceUnlock = true;
$("face-unlock").addEventListener("click", async () => {
  const on = !faceUnlock;
  if (!confirm(`Turn face unlock ${on ? "on" : "off"} at ${door() || "the door"}?`)) return;
  try { await api("PUT", `/api/doors/${encodeURIComponent(door())}/face-unlock`, { on }); say(`face unlock turning ${on ? "on" : "off"}`); }
  catch (e) { say(e.message); }
});
$("code-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const code = $("code").value;
  $("code").value = "";
  if (!code) return;
  try { await api("POST", `/api/doors/${encodeURIComponent(door())}/code`, { code }); say("code sent"); }
  catch (err) { say(err.message); }
});

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
    faceUnlock = s.face_unlock !== false;
    $("face-unlock").textContent = `face unlock: ${faceUnlock ? "on" : "off"}`;
    $("face-unlock").className = faceUnlock ? "on" : "off";
    $("awaiting").textContent = s.awaiting_code ? `${s.awaiting_code}: enter your code` : "";
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
  if ($("f-refusal").value) q.set("refusal", $("f-refusal").value);
  const csv = new URLSearchParams(q);
  csv.delete("offset"); csv.delete("limit"); csv.set("format", "csv");
  $("csv").href = `/api/decisions?${csv}`;
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
      const v = el("button", { class: "visitor" }, "visitor pass…");
      v.addEventListener("click", () => visitorPass(d.id));
      action.append(b, v);
    }
    const closest = d.person || d.closest;
    if (d.id && closest) {
      // The face was (nearly) taken for `closest`: keep it as one they are not.
      const n = el("button", { class: "not-this-person" }, `not ${closest}`);
      n.addEventListener("click", () => notThisPerson(d.id, closest));
      action.append(n);
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

async function visitorPass(id) {
  const person = prompt("Visitor's name (a new person, enrolled from this snapshot):", "");
  if (!person) return;
  const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
  const until = prompt("Pass valid until (a date, 2026-12-24, or a date and time, 2026-12-24T18:00):", tomorrow);
  if (!until) return;
  try {
    await api("POST", `/api/decisions/${encodeURIComponent(id)}/visitor-pass`, { person, valid_until: until });
    say(`visitor pass for ${person} until ${until}; live within seconds`);
  } catch (e) { say(`no pass: ${e.message}`); }
}

async function notThisPerson(id, person) {
  if (!confirm(`This face is not ${person}: keep it so it is never let in as ${person}?`)) return;
  try {
    await api("POST", `/api/decisions/${encodeURIComponent(id)}/not-this-person`, { person });
    say(`marked: not ${person}`);
  } catch (e) { say(`not marked: ${e.message}`); }
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
  const rules = el("details", { class: "rules" }, el("summary", {}, `rules${p.rules ? "" : " (any time, every door)"}` +
    (p.not_this_person ? `; ${p.not_this_person} face(s) marked not ${p.person}` : "")));
  rules.addEventListener("toggle", () => { if (rules.open && !rules.dataset.loaded) rulesForm(p.person, rules); });
  return el("div", { class: "person", "data-person": p.person },
    el("h2", {}, `${p.person} (${p.in_use} of ${p.photos.length} photos in use) `, remove), photos, drop, rules);
}

// A person's rules (person.yaml beside their photos): the server checks them and names a bad key.
async function rulesForm(person, box) {
  const path = `/api/people/${encodeURIComponent(person)}/rules`;
  let data;
  try { data = await api("GET", path); } catch (e) { box.append(el("p", {}, e.message)); return; }
  box.dataset.loaded = "1";
  const r = data.rules;
  const field = (name, label, value, attrs = {}) => el("label", {}, label, " ",
    el("input", { name, value: value || "", ...attrs }));
  const form = el("form", { class: "rules-form" },
    field("name", "display name", r.name),
    field("windows", "when (separated by ;, e.g. mon-fri 08:00-18:00; sat 09:00-12:00; empty: any time)", "", {}),
    field("valid_from", "valid from", r.valid_from, { placeholder: "2026-12-01 or 2026-12-01T09:00" }),
    field("valid_until", "valid until", r.valid_until, { placeholder: "2026-12-06 or 2026-12-06T18:00" }),
    field("doors", "doors (comma-separated; empty: every door)", (r.doors || []).join(", ")),
    el("label", {}, el("input", { name: "second_factor", type: "checkbox", ...(r.second_factor ? { checked: "" } : {}) }),
      " a code with every face"),
    el("button", { type: "submit" }, "save rules"));
  form.elements.windows.value = (r.windows || []).join("; ");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = form.elements;
    const body = { name: f.name.value.trim() };
    const windows = f.windows.value.split(/[;\n]/).map((w) => w.trim()).filter(Boolean);
    if (windows.length) body.windows = windows;
    if (f.valid_from.value.trim()) body.valid_from = f.valid_from.value.trim();
    if (f.valid_until.value.trim()) body.valid_until = f.valid_until.value.trim();
    const doors = f.doors.value.split(",").map((d) => d.trim()).filter(Boolean);
    if (doors.length) body.doors = doors;
    body.second_factor = f.second_factor.checked;
    try { await api("PUT", path, body); say(`rules of ${person} saved`); } catch (err) { say(`rules not saved: ${err.message}`); }
  });
  const code = el("form", { class: "code-form" },
    el("input", { name: "code", type: "password", autocomplete: "new-password", placeholder: data.code_set ? "code set; type a new one" : "no code set" }),
    el("button", { type: "submit" }, "set code"));
  code.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("PUT", `/api/people/${encodeURIComponent(person)}/code`, { code: code.elements.code.value });
      code.elements.code.value = "";
      code.elements.code.placeholder = "code set; type a new one";
      say(`code of ${person} set`);
    } catch (err) { say(`code not set: ${err.message}`); }
  });
  box.append(form, code, data.problem ? el("p", { class: "flag" }, data.problem) : "");
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
