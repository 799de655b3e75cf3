// popbt dashboard: helpers shared by both pages. Vanilla JS, inline SVG, nothing fetched
// from elsewhere. Every value shown comes from the JSON endpoints; text is always set with
// textContent, never parsed as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PURPLE = "#7b2cbf";
const ORANGE = "#e8871e";
const GREY = "#9a9a9a";

// A number to 4 significant digits, as Python's "%.4g" writes it.
function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "";
  if (v === 0) return "0";
  const exp = Math.floor(Math.log10(Math.abs(v)));
  if (exp < -4 || exp >= 4) {
    const [m, e] = v.toExponential(3).split("e");
    const sign = e[0] === "-" ? "-" : "+";
    const digits = e.replace(/^[+-]/, "").padStart(2, "0");
    return `${stripZeros(m)}e${sign}${digits}`;
  }
  return stripZeros(v.toPrecision(4));
}

function stripZeros(s) {
  return s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
}

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAll(node, attrs);
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAll(node, attrs);
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function setAll(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
}

function tip(text) {
  return s("title", { text });
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat());
  return node;
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

// -- polling -------------------------------------------------------------------------

// Fetch `url` every `every` ms and hand each new document to `render`; stops once
// `render` returns true (nothing will change any more). Shows the state in #live.
function poll(url, render, every) {
  let last = null;
  async function tick() {
    let done = false;
    try {
      const response = await fetch(url, { cache: "no-store" });
      const body = await response.text();
      if (!response.ok) {
        let message = `${response.status} ${response.statusText}`;
        try { message = JSON.parse(body).error || message; } catch (e) { /* not JSON */ }
        live(`error: ${message} (retrying)`, "error");
      } else {
        const data = JSON.parse(body);
        if (body !== last) {
          done = render(data) === true;
          last = body;
        } else {
          done = data.finished === true;
        }
        live(done ? "finished: nothing more to update" : `live: updated ${new Date().toLocaleTimeString()}`,
             done ? "done" : "ok");
      }
    } catch (e) {
      live("cannot reach the dashboard server (retrying)", "error");
    }
    if (!done) setTimeout(tick, every);
  }
  tick();
}

function live(text, state) {
  const node = document.getElementById("live");
  if (!node) return;
  node.textContent = text;
  node.className = `live ${state}`;
}

// -- scales and axes -------------------------------------------------------------------

function extent(values, pad) {
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  if (!finite.length) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    const d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * (pad || 0);
  return [lo - d, hi + d];
}

function linear(d0, d1, r0, r1) {
  const f = (v) => r0 + ((v - d0) / (d1 - d0 || 1)) * (r1 - r0);
  f.ticks = (n) => niceTicks(d0, d1, n);
  return f;
}

function logScale(d0, d1, r0, r1) {
  const l0 = Math.log10(d0);
  const l1 = Math.log10(d1);
  const f = (v) => r0 + ((Math.log10(v) - l0) / (l1 - l0 || 1)) * (r1 - r0);
  f.ticks = () => {
    const out = [];
    for (let e = Math.ceil(l0 - 1e-9); e <= Math.floor(l1 + 1e-9); e++) out.push(10 ** e);
    if (out.length < 2) return [d0, d1];
    return out;
  };
  return f;
}

// Categories 0..n-1 (a Choice's options) at the centres of n equal bands.
function bands(n, r0, r1) {
  const w = (r1 - r0) / n;
  const f = (i) => r0 + w * (i + 0.5);
  f.ticks = () => [...Array(n).keys()];
  f.width = Math.abs(w);
  return f;
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / Math.max(1, n || 5);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

// Integer ticks only (intervals): a step of 1, 2, 5, 10, ... so at most about n of them.
function intTicks(lo, hi, n) {
  const span = Math.max(1, hi - lo);
  let step = 1;
  for (const m of [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]) {
    step = m;
    if (span / m <= (n || 10)) break;
  }
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
  return out;
}

// A bottom and a left axis with grid lines. `x`/`y`: scales with .ticks; `fx`/`fy`: labels.
function axes(box, x, y, opt) {
  const g = s("g", { class: "axes" });
  const [left, top, right, bottom] = [box.left, box.top, box.right, box.bottom];
  for (const v of opt.xticks || x.ticks(6)) {
    const px = x(v);
    g.append(s("line", { x1: px, x2: px, y1: top, y2: bottom, class: "grid" }));
    g.append(s("text", { x: px, y: bottom + 16, class: "tick", "text-anchor": "middle", text: opt.fx(v) }));
  }
  for (const v of opt.yticks || y.ticks(5)) {
    const py = y(v);
    g.append(s("line", { x1: left, x2: right, y1: py, y2: py, class: "grid" }));
    g.append(s("text", { x: left - 6, y: py + 4, class: "tick", "text-anchor": "end", text: opt.fy(v) }));
  }
  g.append(s("line", { x1: left, x2: right, y1: bottom, y2: bottom, class: "axis" }));
  g.append(s("line", { x1: left, x2: left, y1: top, y2: bottom, class: "axis" }));
  g.append(s("text", { x: (left + right) / 2, y: bottom + 34, class: "label", "text-anchor": "middle", text: opt.xlabel }));
  g.append(s("text", {
    x: 0, y: 0, class: "label", "text-anchor": "middle", text: opt.ylabel,
    transform: `translate(${left - 46},${(top + bottom) / 2}) rotate(-90)`,
  }));
  return g;
}

// -- colour ------------------------------------------------------------------------------

const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];

function viridis(t) {
  const u = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(u));
  const a = hex(VIRIDIS[i]);
  const b = hex(VIRIDIS[i + 1]);
  const f = u - i;
  return `rgb(${a.map((c, k) => Math.round(c + (b[k] - c) * f)).join(",")})`;
}

function hex(c) {
  return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
}

// Score -> colour, the better end yellow whichever way the metric goes.
function scoreColour(lo, hi, direction) {
  return (v) => {
    const t = hi > lo ? (v - lo) / (hi - lo) : 1;
    return viridis(direction === "min" ? 1 - t : t);
  };
}

// A vertical colour bar at (x, y) of height `height`, labelled with the score range.
function colourBar(x, y, height, lo, hi, direction, label) {
  const g = s("g", { class: "colourbar" });
  const steps = 24;
  const colour = scoreColour(lo, hi, direction);
  for (let i = 0; i < steps; i++) {
    const v = hi - ((hi - lo) * i) / (steps - 1);
    g.append(s("rect", { x, y: y + (height * i) / steps, width: 12, height: height / steps + 0.5, fill: colour(v) }));
  }
  g.append(s("text", { x: x + 16, y: y + 9, class: "tick", text: fmt(hi) }));
  g.append(s("text", { x: x + 16, y: y + height, class: "tick", text: fmt(lo) }));
  g.append(s("text", { x: x + 6, y: y - 8, class: "tick", "text-anchor": "middle", text: label }));
  return g;
}
