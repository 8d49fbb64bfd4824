// Search: a text, a stored image ("more like this") or an uploaded image, minus "without" terms, narrowed by
// category and date; zero-shot and an adapter side by side, with scores and rank changes; every result can be
// marked relevant or not relevant to the query of its own column's search (its search_id), and the mark taken back.
import { api, uploadForm } from "../api.js";
import { fmt, guarded, h } from "../dom.js";
import { collectionCategories, thumbnail } from "./images.js";

// Two toggle buttons; the pressed one is the mark the server holds. Pressing it again takes the mark back
// (DELETE); pressing the other one replaces it (the new mark is stored first, then the old one taken back).
function markButtons(hit, name, marks) {
  let held = null; // the server's row of this result's mark, if it has one
  const buttons = [[true, "Relevant", "✓"], [false, "Not relevant", "✗"]].map(([relevant, label, sign]) =>
    h("button", { type: "button", class: `small secondary mark ${relevant ? "relevant" : "not-relevant"}`,
      "aria-pressed": "false", "aria-label": `${label}: image ${hit.image_id} (${name})`, title: label,
      dataset: { label }, onclick: guarded(async (e) => {
        const button = e.currentTarget;
        const before = held;
        buttons.forEach((b) => { b.disabled = true; }); // one change at a time
        try {
          held = before?.relevant === relevant ? null : await marks.mark(hit, relevant);
          if (before) await marks.unmark(before.id);
        } finally {
          buttons.forEach((b) => { b.disabled = false; });
        }
        for (const b of buttons) {
          const on = held !== null && b === button;
          b.setAttribute("aria-pressed", String(on));
          b.title = on ? "Take this mark back" : b.dataset.label;
        }
      }) }, `${sign} ${label}`));
  return h("span", { class: "marks", role: "group", "aria-label": `Mark image ${hit.image_id}` }, buttons);
}

function hitList(hits, otherRanks, moreLike, marks) {
  return h("ol", { class: "hits" }, hits.map((hit, rank) => {
    const before = otherRanks?.get(hit.image_id);
    const move = otherRanks === undefined ? null
      : before === undefined ? h("span", { class: "move new", title: "not in the zero-shot results" }, "new")
        : before > rank ? h("span", { class: "move up", title: `zero-shot rank ${before + 1}` }, `▲${before - rank}`)
          : before < rank ? h("span", { class: "move down", title: `zero-shot rank ${before + 1}` }, `▼${rank - before}`) : null;
    const name = hit.captions[0] || hit.filename;
    return h("li", { class: "hit", dataset: { image: hit.image_id } },
      thumbnail(hit.thumbnail_url, name),
      h("div", { class: "meta" },
        h("span", { class: "score", title: "cosine similarity" }, fmt.score(hit.score)), move,
        hit.category ? h("span", { class: "badge" }, hit.category) : null,
        h("span", { class: "caption", title: [hit.filename, ...hit.captions].join("\n") }, name),
        h("button", { type: "button", class: "small secondary more-like", "aria-label": `More like image ${hit.image_id} (${name})`,
          onclick: () => moreLike(hit) }, "More like this"),
        marks ? markButtons(hit, name, marks) : null));
  }));
}

function column(title, id, response, otherRanks, moreLike, markFor) {
  return h("section", { class: "column", id, "aria-label": title, dataset: { search: response.search_id ?? "" } },
    h("h3", {}, title, " ", h("span", { class: "muted" }, `(${response.adapter === "none" ? "zero-shot" : response.adapter}, ${response.results.length} results)`)),
    response.results.length ? hitList(response.results, otherRanks, moreLike, markFor(response.search_id)) : h("p", { class: "muted" }, "No results."));
}

// A local calendar day as an inclusive UTC instant: its first or its last millisecond.
const dayStart = (day) => day && new Date(`${day}T00:00:00`).toISOString();
const dayEnd = (day) => day && new Date(`${day}T23:59:59.999`).toISOString();

export async function searchView(body, collection) {
  const url = `/collections/${collection.id}/search`;
  const [versions, categories] = await Promise.all([
    api("GET", `/collections/${collection.id}/adapters`), collectionCategories(collection.id)]);
  const active = versions.find((v) => v.active);
  const query = h("input", { id: "query", type: "search", autocomplete: "off", placeholder: "a red car at night" });
  const without = h("input", { id: "without", type: "search", autocomplete: "off", placeholder: "night, rain",
    "aria-describedby": "without-help" });
  const imageFile = h("input", { id: "query-image", type: "file", accept: "image/*" });
  const adapter = h("select", { id: "adapter" },
    h("option", { value: "active" }, active ? `Active adapter (${active.name})` : "Active adapter (none: zero-shot)"),
    h("option", { value: "none" }, "Zero-shot only"),
    versions.map((v) => h("option", { value: v.name }, `${v.name} · ${v.method}${v.active ? " · active" : ""}`)));
  const k = h("select", { id: "k" }, [5, 10, 20, 50].map((n) => h("option", { value: n, selected: n === 10 }, String(n))));
  const category = h("select", { id: "filter-category" }, h("option", { value: "" }, "Any category"),
    categories.map((c) => h("option", { value: c }, c)));
  const dateOf = h("select", { id: "filter-date-of" },
    h("option", { value: "uploaded" }, "Uploaded"), h("option", { value: "captured" }, "Taken (camera date)"));
  const dateFrom = h("input", { id: "filter-from", type: "date" });
  const dateTo = h("input", { id: "filter-to", type: "date" });
  const compare = h("input", { type: "checkbox", id: "compare", checked: true });
  const results = h("div", { id: "results", "aria-live": "polite" });
  const markCount = h("span", { id: "feedback-count", class: "muted", "aria-live": "polite" });

  async function countMarks() {
    const page = await api("GET", `/collections/${collection.id}/feedback?limit=1`);
    markCount.textContent = `${page.total} mark${page.total === 1 ? "" : "s"}`;
  }
  // A column's marks name its own search, so a mark is about the query that column answered.
  const markFor = (searchId) => searchId && {
    async mark(hit, relevant) {
      const row = await api("POST", `/collections/${collection.id}/feedback`, { search_id: searchId, image_id: hit.image_id, relevant });
      await countMarks();
      return row;
    },
    async unmark(id) {
      await api("DELETE", `/collections/${collection.id}/feedback/${id}`);
      await countMarks();
    },
  };

  function options(who) {
    const filter = {};
    if (category.value) filter.category = category.value;
    if (dateFrom.value) filter[`${dateOf.value}_from`] = dayStart(dateFrom.value);
    if (dateTo.value) filter[`${dateOf.value}_to`] = dayEnd(dateTo.value);
    return { k: Number(k.value), adapter: who, filter };
  }
  // "without: a, b" becomes one term of weight -1 per comma-separated text.
  const negatives = () => without.value.split(",").map((s) => s.trim()).filter(Boolean).map((text) => ({ text, weight: -1 }));

  /** Runs one query (`ask(adapter)` returns a search response) and shows it, side by side when asked. */
  async function show(label, ask) {
    const sideBySide = compare.checked && adapter.value !== "none";
    results.replaceChildren(h("p", { class: "muted" }, "Searching…"));
    const [zeroShot, tuned] = await Promise.all([sideBySide ? ask("none") : null, ask(adapter.value)]);
    const heading = h("h2", { id: "results-for" }, label);
    if (!sideBySide) {
      results.replaceChildren(heading, column("Results", "results-single", tuned, undefined, moreLike, markFor));
      return;
    }
    const ranks = new Map(zeroShot.results.map((hit, i) => [hit.image_id, i]));
    const title = tuned.adapter === zeroShot.adapter ? "Active: no adapter yet (zero-shot)" : `Adapter ${tuned.adapter}`;
    results.replaceChildren(heading, h("div", { class: "side-by-side" },
      column("Zero-shot", "results-zero-shot", zeroShot, undefined, moreLike, markFor),
      column(title, "results-adapter", tuned, ranks, moreLike, markFor)));
  }

  const withoutLabel = () => (negatives().length ? `, without ${negatives().map((t) => t.text).join(", ")}` : "");

  const moreLike = guarded(async (hit) => {
    const terms = negatives();
    await show(`More like image #${hit.image_id} (${hit.filename})${withoutLabel()}`, (who) => api("POST", url,
      terms.length ? { ...options(who), terms: [{ image_id: hit.image_id, weight: 1 }, ...terms] }
        : { ...options(who), image_id: hit.image_id }));
    results.scrollIntoView({ block: "start" });
  });

  function byImage(file) {
    const terms = negatives();
    return show(`Like the image ${file.name}${withoutLabel()}`, (who) => {
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("options", JSON.stringify({ ...options(who), ...(terms.length ? { terms } : {}) }));
      return uploadForm(`${url}/image`, form, () => {});
    });
  }

  function byText(text) {
    const terms = negatives();
    return show(`“${text}”${withoutLabel()}`, (who) => api("POST", url,
      terms.length ? { ...options(who), terms: [{ text, weight: 1 }, ...terms] } : { ...options(who), query: text }));
  }

  const form = h("form", { class: "card search", role: "search", onsubmit: guarded(async (e) => {
    e.preventDefault();
    const file = imageFile.files[0];
    if (file) await byImage(file);
    else if (query.value.trim()) await byText(query.value.trim());
    else {
      query.setCustomValidity("Describe what you look for, or choose an image.");
      query.reportValidity();
    }
  }) },
  h("div", { class: "fields" },
    h("div", { class: "grow" }, h("label", { for: "query" }, "Describe what you look for"), query),
    h("div", { class: "grow" }, h("label", { for: "without" }, "Without"), without,
      h("small", { id: "without-help", class: "muted" }, "Words to push away, separated by commas")),
    h("div", {}, h("label", { for: "adapter" }, "Adapter"), adapter),
    h("div", {}, h("label", { for: "k" }, "Results"), k)),
  h("div", { class: "fields filters" },
    h("div", {}, h("label", { for: "filter-category" }, "Category"), category),
    h("div", {}, h("label", { for: "filter-date-of" }, "Date"), dateOf),
    h("div", {}, h("label", { for: "filter-from" }, "From"), dateFrom),
    h("div", {}, h("label", { for: "filter-to" }, "To"), dateTo),
    h("div", { class: "grow" }, h("label", { for: "query-image" }, "Or search with an image file (instead of the text)"), imageFile)),
  h("div", { class: "row" },
    h("label", { class: "check" }, compare, "Compare with zero-shot side by side"),
    h("button", { type: "submit" }, "Search"),
    h("button", { type: "button", class: "secondary", onclick: () => { imageFile.value = ""; } }, "Clear image"),
    h("span", { title: "Results marked relevant or not relevant in this collection (tuning trains on them)" }, markCount)));
  query.addEventListener("input", () => query.setCustomValidity(""));
  body.replaceChildren(form, results);
  query.focus();
  await countMarks();
}
