// modelyard dashboard: polls /ui/api/overview (every 5 s) and /ui/api/live (every 2 s); no build step.
"use strict";
(function () {
  const HISTORY = 90;            // points kept per endpoint (3 minutes at 2 s)
  const LIVE_MS = 2000, OVERVIEW_MS = 5000;
  const history = new Map();     // endpoint key -> [{t, rate, p50, p99}]
  let service = new URLSearchParams(location.search).get("service") || "";
  let lastOverview = null;
  let token = localStorage.getItem("modelyard-token") || "";

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v == null ? "" : v).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const ms = (s) => (s == null ? "–" : s < 0.001 ? (s * 1e6).toFixed(0) + " µs" : s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s");

  async function getJson(path) {
    const headers = token ? { authorization: "Bearer " + token } : {};
    const response = await fetch(path, { headers });
    if (response.status === 401 || response.status === 403) {
      token = prompt("This control plane needs a token to read (modelyard token create NAME --role reader):") || "";
      localStorage.setItem("modelyard-token", token);
      throw new Error("token needed");
    }
    if (!response.ok) throw new Error(path + ": " + response.status + " " + (await response.text()).slice(0, 200));
    return response.json();
  }

  function showError(err) {
    const box = $("error");
    if (err) { box.textContent = String(err.message || err); box.hidden = false; } else { box.hidden = true; }
  }

  function table(el, columns, rows, empty) {
    if (!rows.length) { el.innerHTML = '<tr><td class="muted">' + esc(empty) + "</td></tr>"; return; }
    el.innerHTML = "<tr>" + columns.map((c) => "<th>" + esc(c) + "</th>").join("") + "</tr>" +
      rows.map((r) => "<tr>" + r.map((v) => "<td>" + v + "</td>").join("") + "</tr>").join("");
  }

  function summaryState(states) {
    if (!states.length) return { state: "unknown", reason: "no replica has reported this version yet" };
    const order = ["failed", "loading", "updating", "ready"];
    for (const s of order) {
      const hit = states.find((x) => x.state === s);
      if (hit) return { state: s, reason: s === "failed" ? hit.error : null };
    }
    return { state: states[0].state, reason: null };
  }

  function renderOverview(data) {
    lastOverview = data;
    const select = $("service");
    const names = data.services.map((s) => s.name);
    if (select.options.length !== names.length || [...select.options].some((o, i) => o.value !== names[i])) {
      select.innerHTML = names.map((n) => "<option>" + esc(n) + "</option>").join("");
    }
    select.value = data.service;
    service = data.service;
    $("revision").textContent = "revision " + data.revision + " · " + data.replicas.length + " replica(s)";
    const box = $("endpoints");
    const keys = data.endpoints.map((e) => e.key);
    if (!keys.length) box.innerHTML = '<p class="muted">no endpoints in this service yet (modelyard endpoint add …)</p>';
    for (const card of [...box.querySelectorAll(".card")]) if (!keys.includes(card.dataset.key)) card.remove();
    if (keys.length) { const p = box.querySelector("p"); if (p) p.remove(); }
    for (const ep of data.endpoints) {
      let card = box.querySelector('.card[data-key="' + CSS.escape(ep.key) + '"]');
      if (!card) {
        card = document.createElement("div");
        card.className = "card";
        card.dataset.key = ep.key;
        card.innerHTML = '<h3><span class="name"></span><span class="badge"></span></h3><div class="meta"></div>' +
          '<div class="reason" hidden></div><div class="numbers"><span>rate <b class="rate">0</b>/s</span>' +
          '<span>errors <b class="errors">0</b>/s</span><span>p50 <b class="p50">–</b></span><span>p99 <b class="p99">–</b></span></div>' +
          "<canvas></canvas>" +
          '<div class="legend"><span><i style="background:var(--rate)"></i>req/s</span>' +
          '<span><i style="background:var(--p50)"></i>p50</span><span><i style="background:var(--p99)"></i>p99</span></div>';
        box.appendChild(card);
      }
      const st = summaryState(ep.states);
      card.querySelector(".name").textContent = ep.key;
      const badge = card.querySelector(".badge");
      badge.textContent = st.state;
      badge.className = "badge " + st.state;
      const model = ep.model ? ep.model.name + " v" + ep.model.version + " (" + ep.model.id.slice(0, 8) + ")" : "no model";
      card.querySelector(".meta").textContent = "engine " + ep.engine + " · " + model + (ep.preprocess ? " · code " + ep.preprocess : "");
      const reason = card.querySelector(".reason");
      reason.hidden = !st.reason;
      reason.textContent = st.reason || "";
      draw(card, ep.key);
    }
    const canaries = data.canaries || [];
    $("canaries-section").hidden = !canaries.length;
    table($("canaries"), ["endpoint", "targets", "weights", "sticky key", "shadow"], canaries.map((c) => [
      esc(c.endpoint), esc((c.targets && c.targets.length ? c.targets : [c.prefix + "/* (newest first)"]).join(", ")),
      esc((c.weights || []).join(" / ")), esc(c.sticky_key || ""), esc((c.shadow || []).join(", "))]), "");
    const auto = data.auto_deploy || [];
    $("auto-section").hidden = !auto.length;
    table($("auto"), ["endpoint", "engine", "model name", "project", "tags", "published only", "keeps", "deployed"],
      auto.map((r) => [
        esc(r.endpoint), esc(r.engine), "<code>" + esc(r.name) + "</code>", esc(r.project || "any"),
        esc((r.tags || []).join(", ")), r.published ? "yes" : "", esc(r.max_versions),
        esc((r.deployed || []).map((d) => d.key).join(", ") || "none yet")]), "");
    table($("rules"), ["endpoint", "log freq", "variables"], (data.metric_rules || []).map((r) => [
      esc(r.endpoint), esc(r.log_freq),
      esc(r.variables.map((v) => v.name + ":" + v.kind + (v.buckets.length ? "[" + v.buckets.join(",") + "]" : "") +
        (v.values.length ? "{" + v.values.join(",") + "}" : "")).join("  "))]), "no rules (modelyard metrics add …)");
    table($("replicas"), ["replica", "revision", "last report"], data.replicas.map((r) => [
      esc(r.id), esc(r.revision) + (r.revision !== data.revision ? ' <span class="muted">(behind)</span>' : ""),
      esc(String(r.updated_at).replace("T", " ").slice(0, 19))]), "no live replicas");
    table($("models"), ["name", "project", "version", "framework", "published", "tags", "id"], data.models.map((m) => [
      esc(m.name), esc(m.project), esc(m.version), esc(m.framework), m.published ? "yes" : "", esc((m.tags || []).join(", ")),
      "<code>" + esc(m.id) + "</code>"]), "no models");
  }

  function renderLive(data) {
    const now = data.time;
    const keys = new Set(lastOverview ? lastOverview.endpoints.map((e) => e.key) : []);
    for (const key of keys) {
      const point = data.endpoints[key] || { rate: 0, error_rate: 0, p50: null, p99: null };
      const series = history.get(key) || [];
      series.push({ t: now, rate: point.rate, p50: point.p50, p99: point.p99 });
      while (series.length > HISTORY) series.shift();
      history.set(key, series);
      const card = document.querySelector('.card[data-key="' + CSS.escape(key) + '"]');
      if (!card) continue;
      card.querySelector(".rate").textContent = point.rate.toFixed(1);
      card.querySelector(".errors").textContent = point.error_rate.toFixed(1);
      card.querySelector(".p50").textContent = ms(point.p50);
      card.querySelector(".p99").textContent = ms(point.p99);
      card.dataset.points = String(series.length);
      card.dataset.rate = String(point.rate);
      draw(card, key);
    }
    $("updated").textContent = "updated " + new Date(now * 1000).toLocaleTimeString();
  }

  function draw(card, key) {
    const canvas = card.querySelector("canvas");
    const series = history.get(key) || [];
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300, h = canvas.clientHeight || 70;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    g.strokeStyle = "#e3e6eb"; g.lineWidth = 1;
    g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
    if (series.length < 2) return;
    const step = w / (HISTORY - 1), x0 = w - (series.length - 1) * step;
    const line = (field, color, max) => {
      if (!(max > 0)) return;
      g.strokeStyle = color; g.lineWidth = 1.6; g.beginPath();
      let started = false;
      series.forEach((p, i) => {
        const v = p[field];
        if (v == null) { started = false; return; }
        const x = x0 + i * step, y = h - 3 - (v / max) * (h - 8);
        if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
      });
      g.stroke();
    };
    const maxOf = (f) => Math.max(0, ...series.map((p) => p[f] || 0));
    line("rate", getComputedStyle(document.body).getPropertyValue("--rate") || "#2563eb", maxOf("rate") * 1.1);
    const lat = Math.max(maxOf("p99"), maxOf("p50")) * 1.1;
    line("p50", "#16a34a", lat);
    line("p99", "#db2777", lat);
  }

  async function refreshOverview() {
    try { renderOverview(await getJson("/ui/api/overview?service=" + encodeURIComponent(service))); showError(null); }
    catch (err) { showError(err); }
  }
  async function refreshLive() {
    if (!service) return;
    try { renderLive(await getJson("/ui/api/live?service=" + encodeURIComponent(service))); }
    catch (err) { showError(err); }
  }

  $("service").addEventListener("change", (e) => {
    service = e.target.value;
    history.clear();
    document.getElementById("endpoints").innerHTML = "";
    const url = new URL(location.href); url.searchParams.set("service", service);
    window.history.replaceState(null, "", url);
    refreshOverview().then(refreshLive);
  });
  refreshOverview().then(refreshLive);
  setInterval(refreshOverview, OVERVIEW_MS);
  setInterval(refreshLive, LIVE_MS);
})();
