// One experiment, redrawn from /api/experiments/NAME every 1.5 s until it is finished.
"use strict";

const NAME = document.body.dataset.experiment;
const WIDTH = 820;
const MAX_DOTS = 2500; // above this many results, curves are drawn without a dot per result
const MAX_COPIES = 50;
const view = { x: null, y: null, data: null };

function render(d) {
  view.data = d;
  overview(d);
  populationTable(d);
  scoreChart(d);
  scatterChart(d);
  lineageChart(d);
  copiesTable(d);
  eventsTable(d);
  return d.finished;
}

// -- the cards -------------------------------------------------------------------------

function overview(d) {
  const p = d.progress;
  const status = document.getElementById("status");
  status.textContent = d.finished ? "finished" : d.status;
  status.className = `status ${d.finished ? "finished" : "running"}`;
  document.getElementById("done").textContent = p.done;
  document.getElementById("total").textContent = p.total;
  document.getElementById("fill").style.width = `${Math.round(p.fraction * 100)}%`;
  const counts = [
    [p.running, "running"], [p.pending, "queued"], [p.waiting, "waiting for a decision"],
    [p.retrying, "retrying"], [p.failed, "failed (given up)"],
  ].filter(([n]) => n > 0).map(([n, what]) => `${n} ${what}`);
  if (p.latest_interval !== null) counts.push(`latest interval completed: ${p.latest_interval}`);
  document.getElementById("counts").textContent = counts.join(" · ");

  const b = d.best;
  document.getElementById("best-label").textContent = b ? b.label : "best final model";
  document.getElementById("best-value").textContent = b ? `${d.metric} ${b.score_text}` : "no result yet";
  document.getElementById("best-where").textContent = !b ? ""
    : `member ${b.member} at interval ${b.interval}${b.final ? "" : ", the latest any member completed"}`;
  document.getElementById("best-hparams").textContent = b
    ? Object.entries(b.hparams).map(([k, v]) => `${k} ${v}`).join(" · ") : "";

  const seen = d.best_seen;
  document.getElementById("seen-value").textContent = seen ? `${d.metric} ${seen.score_text}` : "–";
  document.getElementById("seen-where").textContent = seen ? `member ${seen.member} at interval ${seen.interval}` : "";

  const search = d.search === "random" ? "random search" : "PBT";
  document.getElementById("settings").textContent =
    `${search}, ${d.mode}, population ${d.population}, ${d.intervals} intervals, ` +
    `${d.direction === "max" ? "maximise" : "minimise"} ${d.metric}`;
}

// -- the population ----------------------------------------------------------------------

function populationTable(d) {
  const names = d.hparams.map((a) => a.name);
  const head = h("tr", {},
    h("th", { class: "num" }, "member"),
    h("th", { class: "num", title: "the latest interval this member completed" }, "age"),
    h("th", { class: "num" }, d.metric),
    names.map((n) => h("th", { class: "num" }, n)),
    h("th", {}, "state"),
    h("th", {}, "parent"),
  );
  const rows = d.population_table.map((r) => h("tr", { class: r.best ? "best" : null },
    h("td", { class: "num" }, r.best ? h("span", { class: "star", title: d.best.label }, "★ ") : "", r.member),
    h("td", { class: "num" }, r.age === null ? "–" : r.age),
    h("td", { class: "num" }, r.score_text || "–"),
    names.map((n) => h("td", { class: "num" }, r.hparams[n])),
    h("td", {}, h("span", { class: `state ${r.state}` }, r.state), r.detail ? h("span", { class: "detail" }, ` ${r.detail}`) : ""),
    h("td", {}, r.parent),
  ));
  document.querySelector("#population thead").replaceChildren(head);
  document.querySelector("#population tbody").replaceChildren(...rows);
}

// -- scores against interval -----------------------------------------------------------

function frame(height, right, top) {
  return { left: 64, top: top || 18, right: WIDTH - (right || 16), bottom: height - 44, width: WIDTH, height };
}

function svgRoot(box, label) {
  return s("svg", {
    viewBox: `0 0 ${box.width} ${box.height}`, width: box.width, height: box.height,
    role: "img", "aria-label": label,
  });
}

function intervalScale(box, intervals) {
  return linear(0, Math.max(1, intervals - 1), box.left + 8, box.right - 8);
}

function empty(id, text) {
  replace(id, h("p", { class: "note" }, text));
}

function scoreChart(d) {
  const c = d.curves;
  const all = c.members.flatMap((m) => m.points);
  if (!all.length) return empty("curves", "no results yet");
  const box = frame(360, 16, 36);
  const x = intervalScale(box, c.intervals);
  const [lo, hi] = extent(all.map((p) => p[1]), 0.06);
  const y = linear(lo, hi, box.bottom, box.top);
  const root = svgRoot(box, `${c.metric} of every member against interval`);
  root.append(axes(box, x, y, {
    xticks: intTicks(0, Math.max(1, c.intervals - 1), 12), fx: String, fy: fmt,
    xlabel: "interval", ylabel: c.metric,
  }));
  const dots = all.length <= MAX_DOTS;
  for (const m of c.members) {
    const g = s("g", { class: "member" }, tip(`member ${m.member}`));
    g.append(s("polyline", { points: m.points.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), class: "curve" }));
    if (dots) {
      for (const p of m.points) {
        g.append(s("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.2, class: "dot" },
          tip(`member ${m.member}, interval ${p[0]}: ${c.metric} ${fmt(p[1])}`)));
      }
    }
    root.append(g);
  }
  if (c.best.length) {
    const g = s("g", { class: "best-path" });
    g.append(s("polyline", { points: c.best.map((p) => `${x(p[1])},${y(p[2])}`).join(" "), class: "ancestry" }));
    for (const [m, k, v] of c.best) {
      g.append(s("circle", { cx: x(k), cy: y(v), r: 3.6, class: "ancestry-dot" },
        tip(`best model's ancestry: member ${m}, interval ${k}: ${c.metric} ${fmt(v)}`)));
    }
    for (const j of c.jumps) {
      const at = c.best.find((p) => p[0] === j.member && p[1] === j.interval);
      if (!at) continue;
      const px = x(at[1]);
      const py = y(at[2]);
      g.append(s("path", { d: `M${px},${py - 7} L${px + 6},${py} L${px},${py + 7} L${px - 6},${py} Z`, class: "jump" },
        tip(`member ${j.member} copied member ${j.donor} (interval ${j.donor_interval}) and trained interval ${j.interval}`)));
      g.append(s("text", { x: px, y: py - 11, class: "jump-label", "text-anchor": "middle", text: `m${j.donor}→m${j.member}` }));
    }
    root.append(g);
  }
  const final = d.best && d.best.final;
  root.append(legend(box, [
    ["line", GREY, "each member's score"],
    ["line", PURPLE, final ? "ancestry of the best final model" : "ancestry of the best model so far"],
  ]));
  replace("curves", root);
}

// A legend in a row above the plot area.
function legend(box, items) {
  const g = s("g", { class: "legend" });
  let x = box.left;
  const y = 8;
  for (const [kind, colour, label] of items) {
    const dash = kind === "dash" ? "5 3" : null;
    g.append(s("line", { x1: x, x2: x + 22, y1: y + 5, y2: y + 5, stroke: colour, "stroke-width": 3, "stroke-dasharray": dash }));
    g.append(s("text", { x: x + 28, y: y + 9, class: "tick", text: label }));
    x += 40 + label.length * 6.2;
  }
  return g;
}

// -- hyperparameters ---------------------------------------------------------------------

function axisChoices(sc) {
  return [...sc.axes.map((a, i) => ({ ...a, index: i })), { name: sc.metric, kind: "score", index: -1 }];
}

function selectAxes(sc) {
  const choices = axisChoices(sc);
  const names = choices.map((a) => a.name);
  if (view.x === null || !names.includes(view.x)) view.x = names[0];
  if (view.y === null || !names.includes(view.y)) view.y = sc.axes.length > 1 ? names[1] : sc.metric;
  for (const [id, key] of [["x-axis", "x"], ["y-axis", "y"]]) {
    const select = document.getElementById(id);
    if (select.options.length !== names.length) {
      select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
      select.onchange = () => { view[key] = select.value; scatterChart(view.data); };
    }
    select.value = view[key];
  }
  return [choices.find((a) => a.name === view.x), choices.find((a) => a.name === view.y)];
}

function coord(a, p) {
  return a.index < 0 ? p.score : p.values[a.index];
}

// A scale for one axis: the space's own range for a hyperparameter (steady while the run
// goes on), the results' range for the score. Choice: one band per option.
function scaleFor(a, values, r0, r1) {
  if (a.kind === "choice") {
    const f = bands(a.options.length, r0, r1);
    return { f, ticks: f.ticks(), label: (i) => a.options[i] ?? "", jitter: f.width * 0.35 };
  }
  if (a.kind === "log") {
    const f = logScale(a.low, a.high, r0, r1);
    return { f, ticks: f.ticks(), label: fmt, jitter: 0 };
  }
  const [lo, hi] = a.kind === "score" ? extent(values, 0.05) : [a.low, a.high];
  const pad = a.kind === "score" ? 0 : (hi - lo) * 0.03;
  const f = linear(lo - pad, hi + pad, r0, r1);
  const ticks = a.kind === "int" ? intTicks(Math.ceil(lo), Math.floor(hi), 8) : f.ticks(6);
  return { f, ticks, label: fmt, jitter: 0 };
}

// A small fixed offset per (member, interval), so results on the same Choice option do not hide each other.
function jitter(p, amount, salt) {
  if (!amount) return 0;
  const u = (((p.member + 1) * 7919 + (p.interval + 1) * 104729 + salt * 31) % 1000) / 1000;
  return (u - 0.5) * amount;
}

function scatterChart(d) {
  const sc = d.scatter;
  const [ax, ay] = selectAxes(sc);
  if (!sc.points.length) return empty("scatter", "no results yet");
  const box = frame(400, 96);
  const px = scaleFor(ax, sc.points.map((p) => coord(ax, p)), box.left + 8, box.right - 8);
  const py = scaleFor(ay, sc.points.map((p) => coord(ay, p)), box.bottom - 8, box.top + 8);
  const root = svgRoot(box, `${ax.name} against ${ay.name}, coloured by ${sc.metric}`);
  root.append(axes(box, px.f, py.f, {
    xticks: px.ticks, yticks: py.ticks, fx: px.label, fy: py.label, xlabel: ax.name, ylabel: ay.name,
  }));
  const scores = sc.points.map((p) => p.score);
  const lo = Math.min(...scores);
  const hi = Math.max(...scores);
  const colour = scoreColour(lo, hi, sc.direction);
  const place = (p) => [px.f(coord(ax, p)) + jitter(p, px.jitter, 1), py.f(coord(ay, p)) + jitter(p, py.jitter, 2)];
  const names = sc.axes.map((a) => a.name);
  const describe = (p) => {
    const values = names.map((n, i) => `${n} ${sc.axes[i].kind === "choice" ? sc.axes[i].options[p.values[i]] : fmt(p.values[i])}`);
    return `member ${p.member}, interval ${p.interval}: ${sc.metric} ${fmt(p.score)}\n${values.join(", ")}`;
  };
  const visible = sc.points.filter((p) => coord(ax, p) !== null && coord(ay, p) !== null);
  const ordered = [...visible].sort((a, b) => (sc.direction === "min" ? b.score - a.score : a.score - b.score));
  const dots = s("g", { class: "dots" });
  for (const p of ordered) {
    const [cx, cy] = place(p);
    dots.append(s("circle", { cx, cy, r: 5, fill: colour(p.score), class: "hp-dot" }, tip(describe(p))));
  }
  root.append(dots);
  const byKey = new Map(visible.map((p) => [`${p.member}:${p.interval}`, p]));
  const path = sc.best.map(([m, k]) => byKey.get(`${m}:${k}`)).filter(Boolean);
  if (path.length) {
    root.append(s("polyline", { points: path.map((p) => place(p).join(",")).join(" "), class: "schedule" }));
    const [cx, cy] = place(path[path.length - 1]);
    const label = d.best && d.best.final ? "best final model" : "best model so far";
    root.append(s("path", { d: star(cx, cy, 9, 4), class: "best-star" }, tip(`${label}: ${describe(path[path.length - 1])}`)));
  }
  root.append(colourBar(box.right + 34, box.top + 24, box.bottom - box.top - 40, lo, hi, sc.direction, sc.metric));
  replace("scatter", root);
}

function star(cx, cy, outer, inner) {
  const pts = [];
  for (let i = 0; i < 10; i++) {
    const r = i % 2 ? inner : outer;
    const a = -Math.PI / 2 + (i * Math.PI) / 5;
    pts.push(`${cx + r * Math.cos(a)},${cy + r * Math.sin(a)}`);
  }
  return `M${pts.join(" L")} Z`;
}

// -- lineage -----------------------------------------------------------------------------

function lineageChart(d) {
  const L = d.lineage;
  if (!L.nodes.length) return empty("lineage", "no results yet");
  const n = L.members.length;
  const row = Math.max(7, Math.min(26, 520 / n));
  const box = frame(Math.round(row * n + 80), 96, 36);
  const x = intervalScale(box, L.intervals);
  const index = new Map(L.members.map((m, i) => [m, i]));
  const y = (m) => box.top + row * (index.get(m) + 0.5);
  const root = svgRoot(box, "lineage: who copied whom, when");
  root.append(s("defs", {},
    s("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      s("path", { d: "M0,0 L8,4 L0,8 z", fill: ORANGE })),
  ));
  const every = Math.max(1, Math.ceil(n / 26));
  root.append(axes(box, x, { ticks: () => [] }, {
    xticks: intTicks(0, Math.max(1, L.intervals - 1), 12), yticks: [], fx: String, fy: String,
    xlabel: "interval", ylabel: "member",
  }));
  for (const m of L.members) {
    if (index.get(m) % every === 0) {
      root.append(s("text", { x: box.left - 8, y: y(m) + 4, class: "tick", "text-anchor": "end", text: `m${m}` }));
    }
  }
  const own = s("g", { class: "own" });
  for (const [sm, si, m, k] of L.own) own.append(s("line", { x1: x(si), y1: y(sm), x2: x(k), y2: y(m) }));
  root.append(own);
  const copies = s("g", { class: "copies" });
  for (const c of L.copies) {
    const [x1, y1, x2, y2] = [x(c.donor_interval), y(c.donor), x(c.interval), y(c.member)];
    const bend = Math.min(40, Math.abs(y2 - y1) / 3 + 6);
    copies.append(s("path", {
      d: `M${x1},${y1} Q${(x1 + x2) / 2 + bend},${(y1 + y2) / 2} ${x2},${y2}`,
      class: c.reason === "replace" ? "replace" : "exploit", "marker-end": "url(#arrow)",
    }, tip(`interval ${c.interval}: member ${c.member} ${c.reason === "replace" ? "was replaced by" : "copied"} member ${c.donor} (interval ${c.donor_interval})`)));
  }
  root.append(copies);
  const best = s("g", { class: "lineage-best" });
  for (const [sm, si, m, k] of L.best) best.append(s("line", { x1: x(si), y1: y(sm), x2: x(k), y2: y(m) }));
  root.append(best);
  const scores = L.nodes.map((p) => p[2]);
  const lo = Math.min(...scores);
  const hi = Math.max(...scores);
  const colour = scoreColour(lo, hi, d.direction);
  const dots = s("g", { class: "nodes" });
  const r = Math.max(2, Math.min(4.5, row / 3.2));
  for (const [m, k, v] of L.nodes) {
    dots.append(s("circle", { cx: x(k), cy: y(m), r, fill: colour(v) }, tip(`member ${m}, interval ${k}: ${d.metric} ${fmt(v)}`)));
  }
  root.append(dots);
  root.append(colourBar(box.right + 34, box.top + 20, Math.max(40, box.bottom - box.top - 36), lo, hi, d.direction, d.metric));
  const keys = [["line", "#c4c4c4", "trained on from its own checkpoint"], ["line", ORANGE, "copy (exploit)"]];
  if (L.copies.some((c) => c.reason === "replace")) keys.push(["dash", "#cf222e", "replacement"]);
  keys.push(["line", PURPLE, d.best && d.best.final ? "ancestry of the best final model" : "ancestry of the best model so far"]);
  root.append(legend(box, keys));
  replace("lineage", root);
}

function copiesTable(d) {
  for (const th of document.querySelectorAll("#copies th.metric")) {
    th.textContent = th.textContent.startsWith("its") ? `its ${d.metric}` : `donor's ${d.metric}`;
  }
  const all = d.lineage.copies;
  const shown = all.slice(-MAX_COPIES).reverse();
  const rows = shown.map((c) => h("tr", { class: c.on_best ? "best" : null },
    h("td", { class: "num" }, c.interval),
    h("td", { class: "num" }, c.member),
    h("td", {}, `member ${c.donor} (interval ${c.donor_interval})`),
    h("td", {}, c.reason === "replace" ? "replaced after failures" : "exploit", c.on_best ? h("span", { class: "tag" }, "best ancestry") : ""),
    h("td", { class: "num" }, c.score_text || "–"),
    h("td", { class: "num" }, c.donor_score_text || "–"),
    h("td", { class: "wrap" }, c.changes.map((x) => `${x.name} ${x.before}→${x.after}${x.rule ? ` (${x.rule})` : ""}`).join(", ")),
  ));
  document.querySelector("#copies tbody").replaceChildren(...rows);
  document.getElementById("copies").hidden = !rows.length;
  document.getElementById("copies-note").textContent = !all.length
    ? "no copy yet"
    : all.length > shown.length ? `the latest ${shown.length} of ${all.length} copies` : `${all.length} copies`;
}

function eventsTable(d) {
  const rows = d.events.map((e) => h("tr", { class: `event ${e.kind}` },
    h("td", {}, clock(e.at)),
    h("td", {}, e.label),
    h("td", { class: "num" }, e.member),
    h("td", { class: "num" }, e.interval),
    h("td", { class: "message" }, e.message),
  ));
  document.querySelector("#events tbody").replaceChildren(...rows);
  document.getElementById("events").hidden = !rows.length;
  document.getElementById("events-note").textContent = rows.length
    ? "" : "no failures, replacements, expired leases or non-finite scores";
}

poll(`/api/experiments/${encodeURIComponent(NAME)}`, render, 1500);
