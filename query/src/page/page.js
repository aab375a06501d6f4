// The built-in page of the query API: it reads /v1/event-names and
// /v1/metrics with the token from the URL's fragment (never sent to the
// server, so it stays out of access logs) and draws them. Everything is
// built with DOM calls and textContent: event names come from apps and
// are never parsed as HTML.
"use strict";

const FIVE_MIN = 300;
const HOUR = 3600;

const options = new URLSearchParams(location.hash.slice(1));
const token = options.get("token");
const refreshSecs = Math.max(2, Number(options.get("refresh")) || 10);
const hours = Math.min(168, Math.max(1, Number(options.get("hours")) || 24));
// Two requests per event and refresh: a project with hundreds of event
// names would meet the token's rate limit, so at most this many are drawn
// (`#token=...&events=a,b` picks which).
const MAX_EVENTS = 20;
const picked = (options.get("events") || "").split(",").filter((n) => n);
let loads = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function iso(secs) {
  return new Date(secs * 1000).toISOString().replace(".000Z", "Z");
}

function clock(secs) {
  return new Date(secs * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

function day(secs) {
  return new Date(secs * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

async function api(path, query) {
  const r = await fetch(`${path}?${new URLSearchParams(query)}`, {
    headers: { Authorization: `Bearer ${token}` },
    cache: "no-store",
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(`${path}: ${r.status} ${body.message || r.statusText}`);
  }
  return r.json();
}

// The token's claims, for the header only: the server checks the token.
function claims() {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

function points(answer) {
  return answer.series.length ? answer.series[0].points : [];
}

function numberCell(key, text) {
  const td = el("td", { "data-cell": key });
  td.textContent = text;
  if (text === "–") td.className = "empty";
  return td;
}

function bars(values) {
  const w = 96, h = 24, max = Math.max(1, ...values);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "bars");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  values.forEach((v, i) => {
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const bh = Math.round((v / max) * h);
    r.setAttribute("x", i * (w / values.length));
    r.setAttribute("y", h - bh);
    r.setAttribute("width", w / values.length - 1);
    r.setAttribute("height", bh);
    svg.append(r);
  });
  return svg;
}

function drawPerMinute(names, fiveMinute, from) {
  const columns = Array.from({ length: 12 }, (_, i) => from + i * FIVE_MIN);
  const head = el("tr", {}, el("th", {}, "event"));
  for (const c of columns) head.append(el("th", {}, clock(c)));
  head.append(el("th", {}, "trend"));
  const body = el("tbody");
  names.forEach((name, i) => {
    // Points may be finer than 5 minutes (short windows): sum per column.
    const sums = columns.map(() => 0);
    for (const p of points(fiveMinute[i])) {
      const t = Date.parse(p.time) / 1000;
      const col = Math.floor((t - from) / FIVE_MIN);
      if (col >= 0 && col < columns.length) sums[col] += p.events;
    }
    const row = el("tr", {}, el("td", {}, name));
    sums.forEach((n, col) => row.append(numberCell(`${name}|per_minute|${columns[col]}`, (n / 5).toFixed(1))));
    row.append(el("td", {}, bars(sums)));
    body.append(row);
  });
  document.getElementById("per-minute").replaceChildren(el("thead", {}, head), body);
}

function drawHourly(names, hourly) {
  const byHour = new Map();
  names.forEach((name, i) => {
    for (const p of points(hourly[i])) {
      const t = Date.parse(p.time) / 1000;
      if (!byHour.has(t)) byHour.set(t, new Map());
      byHour.get(t).set(name, p);
    }
  });
  const top = el("tr", {}, el("th", {}, "hour"), el("th", {}, "layer"));
  const sub = el("tr", {}, el("th"), el("th"));
  for (const name of names) {
    top.append(el("th", { colspan: "2", class: "group" }, name));
    sub.append(el("th", {}, "users"), el("th", {}, "p95"));
  }
  const body = el("tbody");
  for (const t of [...byHour.keys()].sort((a, b) => b - a)) {
    const cells = byHour.get(t);
    const layer = [...cells.values()].some((p) => p.layer === "batch") ? "batch" : "speed";
    const row = el("tr", {}, el("td", {}, day(t)));
    const badge = el("span", { class: `layer ${layer}` }, layer);
    row.append(el("td", { "data-cell": `*|layer|${t}` }, badge));
    for (const name of names) {
      const p = cells.get(name);
      row.append(numberCell(`${name}|users|${t}`, p ? String(p.users) : "–"));
      row.append(numberCell(`${name}|p95|${t}`, p && p.p95 != null ? p.p95.toFixed(2) : "–"));
    }
    body.append(row);
  }
  document.getElementById("hourly").replaceChildren(el("thead", {}, top, sub), body);
}

async function load() {
  const now = Date.now() / 1000;
  const fiveTo = Math.floor(now / FIVE_MIN) * FIVE_MIN + FIVE_MIN;
  const fiveFrom = fiveTo - 12 * FIVE_MIN;
  const hourTo = Math.floor(now / HOUR) * HOUR + HOUR;
  const hourFrom = hourTo - hours * HOUR;
  const { events: all } = await api("/v1/event-names", { from: iso(hourFrom), to: iso(hourTo) });
  const names = (picked.length ? all.filter((n) => picked.includes(n)) : all).slice(0, MAX_EVENTS);
  const ask = (name, step, from, to) => api("/v1/metrics", { event: name, step, from: iso(from), to: iso(to) });
  const [fiveMinute, hourly] = await Promise.all([
    Promise.all(names.map((n) => ask(n, "5m", fiveFrom, fiveTo))),
    Promise.all(names.map((n) => ask(n, "1h", hourFrom, hourTo))),
  ]);
  drawPerMinute(names, fiveMinute, fiveFrom);
  drawHourly(names, hourly);
  document.querySelector("main").hidden = false;
  document.getElementById("error").hidden = true;
  document.getElementById("status").textContent =
    `${names.length < all.length ? `${names.length} of ${all.length}` : names.length} events · updated ${new Date().toLocaleTimeString()} · refreshes every ${refreshSecs} s`;
  // The ranges drawn, for anyone (the Chromium test) comparing with the API.
  Object.assign(document.body.dataset, { fiveFrom, fiveTo, hourFrom, hourTo });
  loads += 1;
  document.body.dataset.loads = String(loads);
  document.body.dataset.state = "ready";
}

async function refresh() {
  try {
    await load();
  } catch (e) {
    const box = document.getElementById("error");
    box.textContent = String(e.message || e);
    box.hidden = false;
    document.body.dataset.state = "error";
  }
  setTimeout(refresh, refreshSecs * 1000);
}

function start() {
  if (!token) {
    const form = document.getElementById("login");
    form.hidden = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      location.hash = `token=${document.getElementById("token").value.trim()}`;
      location.reload();
    });
    document.getElementById("status").textContent = "no token";
    document.body.dataset.state = "login";
    return;
  }
  const c = claims();
  const scope = c.tenant_id ? `project ${c.project_id}, tenant ${c.tenant_id}` : `project ${c.project_id}`;
  document.getElementById("scope").textContent = scope;
  refresh();
}

start();
