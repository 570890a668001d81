// handoff dashboard: a live picture of each service's load balancer, its
// target groups and instances, the running deployment and its history.
// Plain JavaScript, no build step, no external requests. State comes from
// the admin API (GET /services, /deployments/ID, /services/NAME/deployments)
// and is refreshed on every server-sent event and once a second (request
// rates are the difference between two readings of each target's counter).
"use strict";

const TOKEN_KEY = "handoff-token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (sel, root = document) => root.querySelector(sel);

// ---- the token: from the link's fragment, kept for this tab only ----

function takeTokenFromFragment() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (r.status === 401) throw new Unauthorized(json?.error?.message || "unauthorized");
  if (!r.ok) throw new Error(json?.error?.message || `${method} ${path}: ${r.status}`);
  return json;
}

// ---- small helpers ----

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function ms(v) {
  if (v === null || v === undefined) return "—";
  if (v < 1000) return `${v} ms`;
  if (v < 60000) return `${(v / 1000).toFixed(1)} s`;
  return `${Math.floor(v / 60000)} min ${Math.round((v % 60000) / 1000)} s`;
}

/// A colour per revision, so v1 and v2 read apart at a glance: from a fixed
/// palette with no red and no green (those read as error and success; a
/// tile's outline says its health), each revision keeping the slot it got
/// first in this tab. Consecutive revisions never share a colour.
const PALETTE = ["#9cc3f0", "#f5c27a", "#c7aef0", "#8fd6e0", "#f0d86e", "#e9a8dc", "#b5bfd6", "#d9b99b"];
const COLOURS_KEY = "handoff-colours";
const slots = new Map(JSON.parse(sessionStorage.getItem(COLOURS_KEY) || "[]"));
function colour(rev) {
  if (!slots.has(rev)) {
    slots.set(rev, slots.size % PALETTE.length);
    sessionStorage.setItem(COLOURS_KEY, JSON.stringify([...slots]));
  }
  return PALETTE[slots.get(rev)];
}

function clock(at) {
  return new Date(at).toLocaleTimeString([], { hour12: false });
}

// ---- the confirmation every action goes through ----

/// `detail`, if given, is a promise of what to show under the question
/// (the plan's headline); the dialog opens at once and fills it in.
function confirmAction(text, detail) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  const box = $("#confirm-detail");
  box.replaceChildren();
  box.hidden = !detail;
  if (detail) {
    box.append(el("span", { class: "muted", text: "Planning…" }));
    detail.then((kids) => { if (d.open) box.replaceChildren(...kids); });
  }
  d.returnValue = "";
  d.showModal();
  $("#confirm-cancel").focus();
  return new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

// ---- state ----

const state = {
  services: [],
  /// Per target key: [requests, at ms] from the previous reading.
  counters: new Map(),
  /// Per target key: requests per second.
  rates: new Map(),
  /// Per service: { id, view, series: [[t, inService]], base: Map(revision -> requests at start) }.
  deploys: new Map(),
  history: new Map(),
  flash: new Map(),
};

const ACTIVE = ["running", "rolling-back"];
const FINAL = ["succeeded", "rolled-back", "failed"];

function inService(s) {
  return s.groups.filter((g) => g.weight > 0)
    .reduce((n, g) => n + g.targets.filter((t) => t.state === "healthy").length, 0);
}

function requestsBy(s) {
  const out = new Map();
  for (const g of s.groups) for (const t of g.targets) out.set(t.revision, (out.get(t.revision) || 0) + (t.requests || 0));
  return out;
}

async function refresh() {
  const services = await api("GET", "/services");
  const now = Date.now();
  for (const s of services) {
    for (const g of s.groups) for (const t of g.targets) {
      const key = `${s.name}/${t.name}/${t.addr}`;
      const prev = state.counters.get(key);
      if (prev && now > prev[1]) {
        const r = ((t.requests || 0) - prev[0]) * 1000 / (now - prev[1]);
        state.rates.set(key, Math.max(0, r));
      }
      state.counters.set(key, [t.requests || 0, now]);
    }
    const managed = s.revision !== null && s.revision !== undefined;
    let reloaded = false;
    if (managed && (!state.history.has(s.name) || state.history.get(s.name).stale)) {
      state.history.set(s.name, { list: await api("GET", `/services/${encodeURIComponent(s.name)}/deployments`) });
      reloaded = true;
    }
    let d = state.deploys.get(s.name);
    // The running deployment, else the one shown so far, else the last one.
    const last = managed ? state.history.get(s.name).list[0] : null;
    const id = s.deployment || (d && d.id) || (last && last.id);
    if (managed && id) {
      if (!d || d.id !== id) {
        // Watched live only if it runs now: a finished one has no
        // measured line here (the page did not see it happen).
        d = { id, series: [], base: requestsBy(s), watched: !!s.deployment };
        state.deploys.set(s.name, d);
      }
      if (!d.view || reloaded || s.deployment || !FINAL.includes(d.view.status)) {
        d.view = await api("GET", `/deployments/${encodeURIComponent(id)}`);
      }
      if (d.watched) {
        // Time from the deployment's start; a point whenever the count
        // changes, the line drawn up to the last reading.
        const t = Math.max(0, now - d.view.created_ms), n = inService(s);
        const prev = d.series[d.series.length - 1];
        if (!prev || prev[1] !== n) d.series.push([t, n]);
        d.seen = t;
        if (!ACTIVE.includes(d.view.status)) d.watched = false;
      }
      d.live = requestsBy(s);
    }
  }
  state.services = services;
  render();
}

let pending = null;
function soon(delay = 120) {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    refresh().catch(onError);
  }, delay);
}

function onError(e) {
  if (e instanceof Unauthorized) {
    // The server's message speaks to scripts (headers); this one to a
    // person at a browser.
    showLogin(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused. Paste the token that handoff serve printed (or the one in STATE_DIR/token)." : "");
    return;
  }
  console.warn(e);
}

// ---- the live stream: fetch (so the token goes in a header), parsed by hand ----

let streamAbort = null;
async function stream() {
  const conn = $("#conn");
  let wait = 500;
  for (;;) {
    if (!token()) return;
    streamAbort = new AbortController();
    try {
      const r = await fetch("/events", { headers: { Authorization: "Bearer " + token() }, signal: streamAbort.signal });
      if (r.status === 401) throw new Unauthorized("unauthorized");
      if (!r.ok || !r.body) throw new Error(`events: ${r.status}`);
      conn.dataset.state = "live";
      conn.textContent = "live";
      wait = 500;
      soon(0);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          onEvent(block);
        }
      }
    } catch (e) {
      if (e instanceof Unauthorized) { onError(e); return; }
      if (e.name === "AbortError") return;
    }
    conn.dataset.state = "reconnecting";
    conn.textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 8000);
  }
}

function onEvent(block) {
  let kind = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (kind === "deployment") {
    try {
      const e = JSON.parse(data);
      const h = state.history.get(e.service);
      if (h && !["hook", "waiting", "load"].includes(e.kind)) h.stale = true;
    } catch (_) { /* keep going */ }
  }
  if (kind === "deployment" || kind === "target" || kind === "lagged") soon();
}

// ---- rendering ----

function render() {
  const root = $("#services");
  for (const s of state.services) {
    let sec = document.getElementById(`svc-${s.name}`);
    if (!sec) {
      sec = buildService(s);
      root.append(sec);
    }
    updateService(sec, s);
  }
}

// HTTPS: the certificate's names and days left; with ACME, where its
// renewal stands (a failure says why and when it is tried again).
function updateCert(node, c) {
  node.hidden = !c;
  if (!c) return;
  const days = Math.floor((c.not_after_ms - Date.now()) / 86400000);
  let text = `🔒 ${c.names.join(", ")} · expires in ${days} day${days === 1 ? "" : "s"}`;
  let state = days < 14 ? "warn" : "ok";
  const a = c.acme;
  if (a) {
    if (a.state === "pending") { text = "🔒 ACME: waiting for the first certificate (a self-signed stand-in is served)"; state = "warn"; }
    else if (a.state === "ordering") text += " · ACME: ordering a new one";
    else if (a.state === "failed") {
      const next = a.next_attempt_ms ? `, next try at ${new Date(a.next_attempt_ms).toLocaleTimeString()}` : "";
      text += ` · ACME renewal failed ${a.failures}×: ${a.error || "no reason given"}${next}`;
      state = "bad";
    } else if (a.renew_at_ms) text += ` · ACME renews ${new Date(a.renew_at_ms).toLocaleString()}`;
  }
  node.textContent = text;
  node.dataset.state = state;
}

function buildService(s) {
  const managed = s.revision !== null && s.revision !== undefined;
  const sec = el("section", { class: "service", id: `svc-${s.name}`, "data-service": s.name, "aria-label": `service ${s.name}` });
  sec.append(el("div", { class: "service-head" },
    el("h2", { text: s.name }),
    el("span", { class: "meta", "data-role": "meta" }),
    el("span", { class: "cert", "data-role": "cert", "aria-label": "certificate" })));
  // A service on hosts: one chip per host (empty, and hidden, otherwise).
  sec.append(el("div", { class: "hosts", "data-role": "hosts", "aria-label": "hosts" }));
  const left = el("div", {}, svgPicture(), el("div", { class: "legend", "data-role": "legend", "aria-label": "revision colours" }),
    el("ul", { class: "failing", "data-role": "failing", "aria-label": "instances not running or not healthy" }));
  const right = el("div", { "data-role": "side" });
  sec.append(el("div", { class: "grid" }, left, right));
  if (managed) {
    right.append(
      deployForm(s.name),
      el("h3", { "data-role": "deployment-title", text: "Deployment" }),
      el("div", { "data-role": "deployment" }));
    sec.append(el("h3", { text: "History" }), el("div", { "data-role": "history" }));
  } else {
    right.append(el("p", { class: "muted", text: "Fixed targets: handoff balances them; it does not deploy them." }));
  }
  return sec;
}

function svgPicture() {
  const p = svg("svg", { class: "picture", viewBox: "0 0 800 300", role: "img", "aria-label": "load balancer, groups and instances" });
  const lb = svg("g", { class: "lb" });
  lb.append(svg("rect", { x: 300, y: 8, width: 200, height: 40, rx: 8 }));
  const t = svg("text", { x: 400, y: 33, "text-anchor": "middle" });
  t.textContent = "load balancer";
  lb.append(t);
  p.append(svg("g", { "data-role": "links" }), lb, svg("g", { "data-role": "groups" }));
  return p;
}

const TILE_W = 150, TILE_H = 58, GAP = 10, GROUP_PAD = 12, GROUP_TOP = 90;

function updateService(sec, s) {
  // The bound address (port 0 resolved), not the configured one.
  const listen = s.bound || (!s.listen ? null : /:0$/.test(s.listen) ? `${s.listen.slice(0, -2)}, port picked at start (handoff serve prints it)` : s.listen);
  const want = s.desired !== null && s.desired !== undefined ? ` of ${s.desired}` : "";
  $("[data-role=meta]", sec).textContent =
    (listen ? `listens on ${listen}` : `behind ${s.balancer}`) + (s.revision ? ` · serving ${s.revision}` : "") + ` · ${inService(s)}${want} in service`;
  updateCert($("[data-role=cert]", sec), s.certificate);
  const pic = $("svg.picture", sec);
  const groupsG = $("[data-role=groups]", pic);
  const linksG = $("[data-role=links]", pic);
  const groups = s.groups.length ? s.groups : [];
  const cols = Math.max(1, Math.min(3, Math.ceil(6 / Math.max(1, groups.length))));
  const width = 800;
  const gw = (width - GAP * (groups.length + 1)) / Math.max(1, groups.length);
  const perRow = Math.max(1, Math.min(cols, Math.floor((gw - 2 * GROUP_PAD + GAP) / (TILE_W + GAP))));
  let height = GROUP_TOP + 60;
  const seenGroups = new Set();
  const seenTiles = new Set();
  linksG.replaceChildren();
  groups.forEach((g, gi) => {
    seenGroups.add(g.name);
    const x = GAP + gi * (gw + GAP);
    const rows = Math.max(1, Math.ceil(g.targets.length / perRow));
    const gh = 34 + rows * (TILE_H + GAP) + GROUP_PAD;
    height = Math.max(height, GROUP_TOP + gh + 10);
    let node = $(`g.group[data-group="${CSS.escape(g.name)}"]`, groupsG);
    if (!node) {
      node = svg("g", { class: "group", "data-group": g.name });
      node.append(svg("rect", {}), svg("text", { class: "label" }), svg("g", { class: "tiles" }));
      groupsG.append(node);
    }
    node.setAttribute("data-weight", g.weight);
    node.setAttribute("data-live", g.weight > 0);
    const r = node.querySelector("rect");
    r.setAttribute("x", x); r.setAttribute("y", GROUP_TOP); r.setAttribute("width", gw); r.setAttribute("height", gh);
    const label = node.querySelector("text.label");
    label.setAttribute("x", x + 10); label.setAttribute("y", GROUP_TOP + 20);
    label.textContent = `${g.name} group · weight ${g.weight}%`;
    const link = svg("line", { class: "link", x1: 400, y1: 48, x2: x + gw / 2, y2: GROUP_TOP,
      "stroke-width": 1 + g.weight / 12, opacity: g.weight > 0 ? 1 : 0.25 });
    linksG.append(link);
    const tilesG = node.querySelector("g.tiles");
    const hostOf = new Map((s.instances || []).filter((i) => i.host).map((i) => [i.name, i.host]));
    const hostState = new Map((s.hosts || []).map((h) => [h.name, h]));
    const byName = [...g.targets].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    byName.forEach((t, i) => {
      const key = `${t.name}@${t.addr}`;
      seenTiles.add(key);
      let tile = [...tilesG.children].find((c) => c.dataset.key === key);
      if (!tile) {
        tile = svg("g", { class: "tile", "data-key": key });
        tile.append(svg("rect", { width: TILE_W, height: TILE_H }),
          svg("text", { class: "name", x: 8, y: 18 }), svg("text", { class: "small", x: 8, y: 34 }),
          svg("text", { class: "small", x: 8, y: 49 }));
        tilesG.append(tile);
      }
      const tx = x + GROUP_PAD + (i % perRow) * (TILE_W + GAP);
      const ty = GROUP_TOP + 30 + Math.floor(i / perRow) * (TILE_H + GAP);
      // The SVG attribute, not a CSS transform: browsers disagree on CSS
      // units inside a scaled viewBox. States animate (colours, outline).
      tile.setAttribute("transform", `translate(${tx} ${ty})`);
      tile.dataset.name = t.name;
      tile.dataset.revision = t.revision;
      tile.dataset.state = t.state;
      tile.dataset.group = g.name;
      const host = hostOf.get(t.name);
      if (host) tile.dataset.host = host; else delete tile.dataset.host;
      tile.querySelector("rect").setAttribute("fill", colour(t.revision));
      const [name, line1, line2] = tile.querySelectorAll("text");
      name.textContent = `${t.name} · ${t.revision}`;
      line1.textContent = host ? `${t.state} · on ${host}` : t.state;
      const rate = state.rates.get(`${s.name}/${t.name}/${t.addr}`) || 0;
      line2.textContent = `${t.in_flight} in flight · ${rate.toFixed(0)} req/s`;
      // The tooltip says why a tile is not healthy: its last health check.
      let tip = tile.querySelector("title");
      if (!tip) tile.append(tip = svg("title"));
      tip.textContent = t.last_check ? `${t.name} (${t.state}): last check ${t.last_check}` : `${t.name} (${t.state})`;
      const h = host && hostState.get(host);
      if (h) tip.textContent += h.state === "up" ? ` · on host ${host}` : ` · on host ${host}, unreachable: ${h.why || "no answer"}`;
    });
    for (const c of [...tilesG.children]) if (!seenTiles.has(c.dataset.key)) c.remove();
  });
  for (const n of [...groupsG.children]) if (!seenGroups.has(n.dataset.group)) n.remove();
  pic.setAttribute("viewBox", `0 0 800 ${height}`);
  const revs = [...new Set(groups.flatMap((g) => g.targets.map((t) => t.revision)))];
  const legend = $("[data-role=legend]", sec);
  const key = revs.join(" ");
  if (legend.dataset.key !== key) {
    legend.dataset.key = key;
    legend.replaceChildren(...revs.map((r) => el("span", { "data-revision": r }, el("span", { class: "swatch", style: `background:${colour(r)}` }), r)),
      el("span", { text: "outline: green healthy · dashed starting · red unhealthy · amber draining" }));
  }
  updateHosts(sec, s);
  updateFailing(sec, s);
  if (s.revision !== null && s.revision !== undefined) {
    updateDeployment(sec, s);
    updateHistory(sec, s);
  }
}

// The hosts of a service placed on hosts: a chip each, green while it
// answers, red with the reason while it does not; its healthy instances;
// and, while any is unreachable, the capacity left.
function updateHosts(sec, s) {
  const box = $("[data-role=hosts]", sec);
  const hosts = s.hosts || [];
  const now = Date.now();
  const lostFor = (h) => (h.since_ms ? ms(Math.max(0, now - h.since_ms)).replace(/\.\d s$/, " s") : null);
  const key = hosts.map((h) => `${h.name} ${h.state} ${h.healthy}/${h.instances} ${h.why || ""} ${lostFor(h) || ""}`).join("|") +
    `|${inService(s)}`;
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  if (!hosts.length) { box.replaceChildren(); return; }
  const chips = hosts.map((h) => {
    const up = h.state === "up";
    const counts = `${h.healthy}/${h.instances} healthy`;
    const title = up
      ? `${h.name}: answers over ssh; ${h.healthy} of ${h.instances} instances healthy`
      : `${h.name} unreachable${h.since_ms ? ` since ${clock(h.since_ms)} (for ${lostFor(h)})` : ""}: ${h.why || "no answer"}; ${h.healthy} of ${h.instances} instances healthy`;
    return el("span", { class: "host", "data-host": h.name, "data-state": h.state, title },
      el("strong", { text: h.name }), ` ${up ? "up" : "unreachable"} · ${counts}`,
      up ? null : el("span", { class: "why", "data-role": "why", text: ` · ${h.why || "no answer"}` + (h.since_ms ? `, for ${lostFor(h)}` : "") }));
  });
  const lost = hosts.filter((h) => h.state !== "up");
  const want = s.desired !== null && s.desired !== undefined ? s.desired : (s.instances || []).length;
  const note = lost.length
    ? el("span", { class: "capacity-note", "data-role": "capacity-note",
      text: `reduced capacity: ${inService(s)} of ${want} in service (${lost.map((h) => `host ${h.name} unreachable`).join(", ")})` })
    : null;
  box.replaceChildren(el("span", { class: "muted", text: "hosts" }), ...chips, ...(note ? [note] : []));
}

// Instances that are not running and healthy, with why: one that cannot
// start has no target, so the picture alone would never show it.
function updateFailing(sec, s) {
  const list = $("[data-role=failing]", sec);
  const sick = (s.instances || []).filter((i) => !(i.state === "running" && i.target_state === "healthy"));
  const key = sick.map((i) => `${i.name} ${i.state} ${i.restarts} ${i.last_error || ""} ${i.last_check || ""}`).join("|");
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(...sick.map((i) => el("li", { "data-instance": i.name },
    el("strong", { text: i.name }),
    ` ${i.state}${i.target_state && i.state === "running" ? ` (${i.target_state})` : ""}` +
      (i.restarts ? `, ${i.restarts} restart${i.restarts === 1 ? "" : "s"} in a row` : "") +
      `: ${i.last_error || i.last_check || "starting"}`)));
}

// ---- actions ----

function deployForm(service) {
  const rev = el("input", { id: `rev-${service}`, name: "revision", placeholder: "revision id, e.g. v2", required: true, size: 18, "aria-label": "revision" });
  const strat = el("select", { id: `strategy-${service}`, name: "strategy", "aria-label": "strategy" },
    el("option", { value: "", text: "configured strategy" }),
    el("option", { value: "in-place", text: "in-place" }),
    el("option", { value: "blue-green", text: "blue/green" }),
    el("option", { value: "all-at-once", text: "all-at-once" }));
  const batch = el("input", { id: `batch-${service}`, name: "batch", placeholder: "batch", size: 6, "aria-label": "in-place batch (count, % or auto)" });
  const msg = el("span", { class: "error", role: "alert", "data-role": "action-error" });
  const form = el("form", { class: "controls", "data-role": "deploy-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { service, revision: rev.value.trim() };
    if (strat.value) body.strategy = strat.value;
    if (batch.value.trim()) body.batch = batch.value.trim();
    const what = `Deploy ${service} to ${body.revision}` + (body.strategy ? ` (${body.strategy})` : "") + (body.batch ? `, batch ${body.batch}` : "") + "?";
    const plan = { revision: body.revision };
    if (body.strategy) plan.strategy = body.strategy;
    if (body.batch) plan.batch = body.batch;
    const headline = api("POST", `/services/${encodeURIComponent(service)}/plan`, plan)
      .then((p) => planHeadline(p.plans[0], body.revision))
      .catch((e) => [el("span", { class: "error", text: `No plan: ${e.message}` })]);
    if (!(await confirmAction(what, headline))) return;
    msg.textContent = "";
    try {
      await api("POST", "/deployments", body);
      rev.value = "";
      state.history.get(service) && (state.history.get(service).stale = true);
      soon(0);
    } catch (e) {
      msg.textContent = e.message;
      onError(e);
    }
  } },
  el("label", { for: `rev-${service}`, text: "Deploy" }), rev, strat, batch,
  el("button", { type: "submit", class: "primary", "data-action": "deploy", text: "Deploy…" }));
  const verbs = el("div", { class: "controls", "data-role": "verbs" });
  for (const [verb, label, cls] of [["pause", "Pause"], ["resume", "Resume"], ["promote", "Promote"], ["abort", "Abort", "danger"], ["rollback", "Rollback", "danger"]]) {
    verbs.append(el("button", { type: "button", class: cls, "data-action": verb, text: label, onclick: async () => {
      if (!(await confirmAction(`${label} ${service}?`))) return;
      msg.textContent = "";
      try {
        await api("POST", `/services/${encodeURIComponent(service)}/${verb}`, verb === "rollback" ? {} : undefined);
        soon(0);
      } catch (e) {
        msg.textContent = e.message;
        onError(e);
      }
    } }));
  }
  return el("div", {}, form, verbs, msg);
}

/// The plan's headline for the confirmation: how long, when the new
/// revision serves, the capacity floor.
function planHeadline(p, rev) {
  const floor = p.capacity_floor < p.desired
    ? el("strong", { text: `capacity drops to ${p.capacity_floor}/${p.desired}` })
    : el("span", { text: `capacity stays at ${p.desired}/${p.desired}` });
  const kids = [el("p", { "data-role": "headline" }, `Plan (${p.strategy}): about ${ms(p.duration_ms)}; ${rev} alone serves after ${ms(p.serving_ms)}; `, floor,
    p.extra_instances ? `; ${p.extra_instances} extra instances` : "", ".")];
  if (p.rollback && p.rollback.summary) kids.push(el("p", { class: "muted", text: `Rollback: ${p.rollback.summary}.` }));
  return kids;
}

// ---- the deployment: timeline, capacity over time, requests per revision ----

function stepStates(view) {
  const steps = view.plan ? view.plan.steps : [];
  const cmp = view.comparison ? view.comparison.steps : [];
  const active = ["running", "rolling-back", "retained"].includes(view.status);
  const stopped = ["rolled-back", "failed"].includes(view.status);
  let last = -1;
  let from = 0;
  steps.forEach((st, i) => {
    const j = view.events.slice(from).findIndex((e) => e.message === st.message);
    if (j >= 0) { last = i; from += j + 1; }
  });
  return steps.map((st, i) => ({
    ...st,
    measured: cmp[i] ? cmp[i].measured_ms : null,
    // A rolled-back or failed deployment stopped at its last step; the
    // steps after it never ran.
    phase: i < last ? "done" : i === last ? (active ? "current" : stopped ? "stopped" : "done")
      : stopped ? "skipped" : "pending",
  }));
}

function updateDeployment(sec, s) {
  const box = $("[data-role=deployment]", sec);
  const d = state.deploys.get(s.name);
  const verbs = $("[data-role=verbs]", sec);
  const status = d && d.view ? d.view.status : null;
  const active = ACTIVE.includes(status);
  for (const b of verbs.querySelectorAll("button")) {
    const v = b.dataset.action;
    b.disabled = v === "pause" ? !(active && !d.view.paused) : v === "resume" ? !(active && d.view.paused)
      : v === "promote" ? !(active || status === "retained") : v === "abort" ? !active : false;
  }
  $("[data-action=deploy]", sec).disabled = active;
  const h = state.history.get(s.name);
  $("[data-role=deployment-title]", sec).textContent = status && !FINAL.includes(status) ? "Deployment" : "Last deployment";
  if (!d || !d.view) {
    if (h && !box.firstChild) box.replaceChildren(el("p", { class: "muted", text: "No deployment yet: deploy a revision above." }));
    return;
  }
  const v = d.view;
  const head = el("p", {},
    el("strong", { text: `${v.id}: ${v.from} → ${v.to}` }), ` ${v.strategy} `,
    el("span", { class: "status", "data-role": "status", "data-status": v.status, text: v.paused ? `${v.status} (paused)` : v.status }));
  if (v.retained_until_ms) head.append(` · blue retained until ${clock(v.retained_until_ms)}`);
  const list = el("ol", { class: "timeline", "data-role": "timeline" });
  for (const st of stepStates(v)) {
    list.append(el("li", { "data-step": st.phase },
      el("span", { text: String(st.n) }), el("span", { text: st.message }),
      el("span", { class: "t", text: st.phase === "skipped" ? "not run" : st.measured !== null && st.measured !== undefined ? `${ms(st.measured)} (plan ${ms(st.ms)})` : `plan ${ms(st.ms)}` })));
  }
  const kids = [head];
  if (v.reason) kids.push(el("p", { class: "error", text: v.reason }));
  if (v.plan) kids.push(list, capacityChart(d, v));
  kids.push(revisionSplit(d, v));
  box.replaceChildren(...kids);
}

/// Capacity in service over time on a 0..desired scale (more than desired,
/// as during a blue/green traffic step, is drawn at the top: full).
function capacityChart(d, v) {
  const p = v.plan, top = Math.max(p.desired, 1);
  const W = 400, H = 96, L = 26, R = 8, T = 8, B = 20;
  const span = Math.max(p.serving_ms || p.duration_ms, d.seen || 0, 1);
  const X = (t) => L + (Math.min(t, span) / span) * (W - L - R), Y = (n) => T + (1 - Math.min(n, top) / top) * (H - T - B);
  const step = (pts) => pts.map(([t, n], i) => (i ? `H${X(t).toFixed(1)}V${Y(n).toFixed(1)}` : `M${X(t).toFixed(1)},${Y(n).toFixed(1)}`)).join("");
  const c = svg("svg", { class: "capacity", viewBox: `0 0 ${W} ${H}`, "data-role": "capacity", role: "img",
    "aria-label": `instances in service over time, 0 to ${top}: planned (dashed) and measured (solid)` });
  const text = (x, y, s, anchor = "end") => { const e = svg("text", { x, y, "text-anchor": anchor }); e.textContent = s; return e; };
  c.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }), svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
    svg("line", { class: "desired", x1: L, x2: W - R, y1: Y(top), y2: Y(top) }),
    text(L - 4, Y(top) + 4, String(top)), text(L - 4, Y(0) + 4, "0"),
    text(L, H - 5, "0 s", "start"), text(W - R, H - 5, ms(span)));
  const planned = p.capacity.filter(([t]) => t <= span);
  if (planned.length) c.append(svg("path", { class: "plan", "data-role": "plan-line", d: step([...planned, [span, planned[planned.length - 1][1]]]) }));
  if (d.series.length) c.append(svg("path", { class: "live", d: step([...d.series, [d.seen, d.series[d.series.length - 1][1]]]) }));
  const measured = d.series.length ? "measured solid" : "measured: not seen by this page";
  return el("div", {}, el("h3", { text: `Instances in service (0–${top}): plan dashed, ${measured}` }), c);
}

function revisionSplit(d, v) {
  let figures;
  if (v.report && v.report.per_revision) {
    figures = v.report.per_revision.map((r) => [r.revision, r.requests]);
  } else {
    figures = [v.from, v.to].map((rev) => [rev, Math.max(0, (d.live?.get(rev) || 0) - (d.base.get(rev) || 0))]);
  }
  const total = figures.reduce((n, f) => n + f[1], 0);
  const bar = el("div", { class: "split", "data-role": "split" });
  const legend = el("div", { class: "legend" });
  for (const [rev, n] of figures) {
    // No requests: an empty bar, not an even split.
    if (n) bar.append(el("span", { style: `flex-grow:${n};background:${colour(rev)}`, title: `${rev}: ${n}` }));
    legend.append(el("span", {}, el("span", { class: "swatch", style: `background:${colour(rev)}` }), `${rev}: ${n.toLocaleString()} requests`));
  }
  return el("div", {}, el("h3", { text: "Requests per revision during the deployment" }), bar, legend);
}

// ---- history and the report view ----

function updateHistory(sec, s) {
  const box = $("[data-role=history]", sec);
  const h = state.history.get(s.name);
  if (!h || h.rendered === h.list) return;
  h.rendered = h.list;
  if (!h.list.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No deployments yet." }));
    return;
  }
  // Narrow enough for the side column: the strategy under the id, the
  // plan under the measured time, a failure's reason on its own row.
  const t = el("table", { class: "history" });
  t.append(el("tr", {}, ...["deployment", "revisions", "status", "took (plan)", "floor", "mixed"].map((x, i) => el("th", { class: i > 2 ? "num" : "", text: x }))));
  for (const d of h.list.slice(0, 12)) {
    const r = d.report || {};
    t.append(el("tr", { "data-id": d.id },
      el("td", {}, el("button", { type: "button", class: "link", "data-action": "report", "data-id": d.id, text: d.id, onclick: () => showReport(d.id) }),
        el("div", { class: "sub", text: d.strategy })),
      el("td", { text: `${d.from} → ${d.to}` }),
      el("td", {}, el("span", { class: "status", "data-status": d.status, text: d.status })),
      el("td", { class: "num" }, ms(r.duration_ms), el("div", { class: "sub", text: `plan ${ms(d.plan?.duration_ms)}` })),
      el("td", { class: "num", text: r.capacity_floor !== undefined ? `${r.capacity_floor}/${r.desired}` : "—" }),
      el("td", { class: "num", text: ms(r.mixed_window_ms) })));
    const why = d.reason || r.reason;
    if (why && FINAL.includes(d.status)) {
      t.append(el("tr", { class: "reason", "data-reason-for": d.id }, el("td", { colspan: 6 }, el("div", { title: why, text: why }))));
    }
  }
  box.replaceChildren(el("div", { class: "table-wrap" }, t));
}

async function showReport(id) {
  const v = await api("GET", `/deployments/${encodeURIComponent(id)}`).catch((e) => { onError(e); return null; });
  if (!v) return;
  $("#report-title").textContent = `${v.id}: ${v.from} → ${v.to} (${v.strategy}), ${v.status}`;
  const body = [];
  if (v.reason) body.push(el("p", { class: "error", text: v.reason }));
  if (v.report) {
    const r = v.report;
    body.push(el("p", { text: `took ${ms(r.duration_ms)} · capacity floor ${r.capacity_floor}/${r.desired} · mixed versions ${ms(r.mixed_window_ms)} · peak ${r.peak_instances} instances` + (r.rollback_ms ? (r.traffic_back_ms != null ? ` · traffic back in ${ms(r.traffic_back_ms)}, rollback done in ${ms(r.rollback_ms)}` : ` · rollback ${ms(r.rollback_ms)}`) : "") }));
  }
  if (v.comparison) {
    const t = el("table", { class: "history" }, el("tr", {}, el("th", { text: "#" }), el("th", { text: "step" }), el("th", { class: "num", text: "predicted" }), el("th", { class: "num", text: "measured" })));
    for (const st of v.comparison.steps) {
      t.append(el("tr", {}, el("td", { text: String(st.n) }), el("td", { text: st.message }), el("td", { class: "num", text: ms(st.predicted_ms) }), el("td", { class: "num", text: ms(st.measured_ms) })));
    }
    body.push(el("h3", { text: "Predicted beside measured" }), t);
    if (v.comparison.callouts.length) body.push(el("ul", { class: "callouts" }, ...v.comparison.callouts.map((c) => el("li", { text: c }))));
  }
  body.push(el("h3", { text: "Events" }), el("div", { class: "events", text: v.events.map((e) => `${clock(e.at_ms)}  ${e.message}`).join("\n") }));
  $("#report-body").replaceChildren(...body);
  $("#report").showModal();
}

// ---- start ----

function showLogin(message) {
  $("#login").hidden = false;
  $("#services").hidden = true;
  $("#logout").hidden = true;
  $("#login-error").textContent = message || "";
  $("#conn").dataset.state = "offline";
  $("#conn").textContent = "not connected";
  if (streamAbort) streamAbort.abort();
  $("#token").focus();
}

function start() {
  $("#login").hidden = true;
  $("#services").hidden = false;
  $("#logout").hidden = false;
  // The stream re-reads the state as soon as it is connected; a failed
  // first read must not keep it from starting.
  refresh().catch(onError);
  stream();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    start();
  });
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  setInterval(() => { if (token() && $("#login").hidden) soon(0); }, 1000);
  if (token()) start(); else showLogin("");
});
