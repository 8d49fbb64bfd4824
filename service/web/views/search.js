// Search: one query, zero-shot and an adapter side by side, with scores and rank changes.
import { api } from "../api.js";
import { fmt, guarded, h } from "../dom.js";
import { thumbnail } from "./images.js";

function hitList(hits, otherRanks) {
  return h("ol", { class: "hits" }, hits.map((hit, rank) => {
    const before = otherRanks?.get(hit.image_id);
    const move = otherRanks === undefined ? null
      : before === undefined ? h("span", { class: "move new", title: "not in the zero-shot results" }, "new")
        : before > rank ? h("span", { class: "move up", title: `zero-shot rank ${before + 1}` }, `▲${before - rank}`)
          : before < rank ? h("span", { class: "move down", title: `zero-shot rank ${before + 1}` }, `▼${rank - before}`) : null;
    return h("li", { class: "hit", dataset: { image: hit.image_id } },
      thumbnail(hit.url.replace(/\/file$/, "/thumbnail"), hit.captions[0] || `image ${hit.image_id}`),
      h("div", { class: "meta" },
        h("span", { class: "score", title: "cosine similarity" }, fmt.score(hit.score)), move,
        hit.category ? h("span", { class: "badge" }, hit.category) : null,
        h("span", { class: "caption", title: hit.captions.join("\n") }, hit.captions[0] || `image ${hit.image_id}`)));
  }));
}

function column(title, id, response, otherRanks) {
  return h("section", { class: "column", id, "aria-label": title },
    h("h3", {}, title, " ", h("span", { class: "muted" }, `(${response.adapter === "none" ? "zero-shot" : response.adapter}, ${response.results.length} results)`)),
    response.results.length ? hitList(response.results, otherRanks) : h("p", { class: "muted" }, "No results."));
}

export async function searchView(body, collection) {
  const url = `/collections/${collection.id}/search`;
  const versions = await api("GET", `/collections/${collection.id}/adapters`);
  const active = versions.find((v) => v.active);
  const query = h("input", { id: "query", type: "search", required: true, autocomplete: "off", placeholder: "a red car at night" });
  const adapter = h("select", { id: "adapter" },
    h("option", { value: "active" }, active ? `Active adapter (${active.name})` : "Active adapter (none: zero-shot)"),
    h("option", { value: "none" }, "Zero-shot only"),
    versions.map((v) => h("option", { value: v.name }, `${v.name} · ${v.method}${v.active ? " · active" : ""}`)));
  const k = h("select", { id: "k" }, [5, 10, 20, 50].map((n) => h("option", { value: n, selected: n === 10 }, String(n))));
  const compare = h("input", { type: "checkbox", id: "compare", checked: true });
  const results = h("div", { id: "results", "aria-live": "polite" });

  const form = h("form", { class: "card search", role: "search", onsubmit: guarded(async (e) => {
    e.preventDefault();
    const ask = (who) => api("POST", url, { query: query.value, k: Number(k.value), adapter: who });
    const sideBySide = compare.checked && adapter.value !== "none";
    results.replaceChildren(h("p", { class: "muted" }, "Searching…"));
    const [zeroShot, tuned] = await Promise.all([sideBySide ? ask("none") : null, ask(adapter.value)]);
    if (!sideBySide) {
      results.replaceChildren(column("Results", "results-single", tuned));
      return;
    }
    const ranks = new Map(zeroShot.results.map((hit, i) => [hit.image_id, i]));
    const title = tuned.adapter === zeroShot.adapter ? "Active: no adapter yet (zero-shot)" : `Adapter ${tuned.adapter}`;
    results.replaceChildren(h("div", { class: "side-by-side" },
      column("Zero-shot", "results-zero-shot", zeroShot), column(title, "results-adapter", tuned, ranks)));
  }) },
  h("div", { class: "fields" },
    h("div", { class: "grow" }, h("label", { for: "query" }, "Describe what you look for"), query),
    h("div", {}, h("label", { for: "adapter" }, "Adapter"), adapter),
    h("div", {}, h("label", { for: "k" }, "Results"), k)),
  h("div", { class: "row" },
    h("label", { class: "check" }, compare, "Compare with zero-shot side by side"),
    h("button", { type: "submit" }, "Search")));
  body.replaceChildren(form, results);
  query.focus();
}
