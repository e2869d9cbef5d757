// The status page: reads /ollana/v1/dashboard every 2 s and writes it into the tables.
// Everything shown comes from the network (server names, model names): it is written as
// text (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function fill(tableId, emptyId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
  if (emptyId) document.getElementById(emptyId).hidden = rows.length > 0;
}

function duration(seconds) {
  const s = Math.floor(seconds || 0);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  if (s < 172800) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " days";
}

function modelsCell(server) {
  const td = el("td", null, "models");
  if (server.models === null) {
    td.appendChild(el("span", "catalogue not fetched yet", "muted"));
    return td;
  }
  const loaded = new Set(server.loaded || []);
  for (const name of server.models) {
    const on = loaded.has(name);
    td.appendChild(el("span", (on ? "● " : "") + name, on ? "model loaded" : "model"));
  }
  if (server.models.length === 0) td.appendChild(el("span", "no models", "muted"));
  return td;
}

function serverRow(s) {
  const name = el("td", s.name, "server-name");
  if (s.current) name.appendChild(el("span", " home", "tag"));
  const usable = s.trust !== "not paired";
  const health = usable ? el("td", s.healthy ? "healthy" : "failing", s.healthy ? "ok" : "bad")
                        : el("td", "not used", "muted");
  const trust = el("td", s.trust, s.trust === "not paired" ? "bad" : "");
  const rtt = el("td", s.rtt_ms === null || s.rtt_ms === undefined ? "–" : s.rtt_ms.toFixed(1) + " ms", "num");
  const load = s.slots ? (s.inflight || 0) + " / " + s.slots : (s.inflight === null ? "–" : String(s.inflight));
  return row([name, el("td", s.address, "mono"), trust, health, rtt, el("td", load, "num"), modelsCell(s)]);
}

function pendingRow(d) {
  return row([el("td", d.device_id, "mono"), d.hostname || "?", el("td", d.address, "mono"), d.kind,
              el("td", d.command, "command")]);
}

function recentRow(r) {
  const at = new Date(r.at * 1000).toLocaleTimeString();
  const status = el("td", r.status || "aborted", r.status >= 200 && r.status < 400 ? "ok" : "bad");
  return row([at, r.method, el("td", r.path, "mono"), r.model || "–", r.server || "–", status,
              el("td", r.ms.toFixed(1), "num")]);
}

function render(doc) {
  const node = doc.node || {};
  document.getElementById("node-name").textContent = node.hostname ? "on " + node.hostname : "";
  document.title = "ollana" + (node.hostname ? " · " + node.hostname : "");
  const parts = [node.role + " on " + node.listen, "ollana " + node.ollana, "trust " + node.trust,
                 "up " + duration(node.uptime_s)];
  if (node.device_id) parts.push("device " + node.device_id);
  document.getElementById("node-line").textContent = parts.join(" · ");
  fill("servers", "servers-empty", (doc.servers || []).map(serverRow));
  const pending = doc.pending || [];
  document.getElementById("pending-section").hidden = pending.length === 0;
  fill("pending", null, pending.map(pendingRow));
  fill("recent", "recent-empty", (doc.recent || []).map(recentRow));
}

async function refresh() {
  const state = document.getElementById("state");
  try {
    const response = await fetch("/ollana/v1/dashboard", {cache: "no-store", headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    state.textContent = "updated " + new Date().toLocaleTimeString();
    state.className = "muted";
  } catch (err) {
    state.textContent = "cannot reach this node (" + err.message + "); retrying";
    state.className = "bad";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", refresh);
