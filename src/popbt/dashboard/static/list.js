// The list of experiments: one line each, refreshed every few seconds.
"use strict";

function progressCell(p) {
  const bar = h("span", { class: "bar" }, h("span", { class: "fill" }));
  bar.firstChild.style.width = `${Math.round(p.fraction * 100)}%`;
  const extra = [];
  if (p.running) extra.push(`${p.running} running`);
  if (p.failed) extra.push(`${p.failed} failed`);
  return h("td", { class: "progress" }, bar, ` ${p.done}/${p.total}`, extra.length ? ` (${extra.join(", ")})` : "");
}

function bestCell(e) {
  const b = e.best;
  if (!b) return h("td", { class: "muted" }, "no result yet");
  return h("td", { title: b.label },
    `${e.metric} ${b.score_text} (member ${b.member})`,
    b.final ? "" : h("span", { class: "tag" }, "so far"));
}

function renderList(data) {
  const rows = data.experiments.map((e) => h("tr", {},
    h("td", {}, h("a", { href: `/experiments/${encodeURIComponent(e.name)}` }, e.name)),
    h("td", {}, h("span", { class: `status ${e.finished ? "finished" : "running"}` }, e.status)),
    h("td", {}, `${e.mode}${e.search === "random" ? ", random search" : ""}`),
    h("td", { class: "num" }, e.population),
    progressCell(e.progress),
    bestCell(e),
  ));
  document.querySelector("#experiments tbody").replaceChildren(...rows);
  document.getElementById("empty").hidden = rows.length > 0;
  return false; // a new experiment may appear at any time: keep polling
}

poll("/api/experiments", renderList, 3000);
