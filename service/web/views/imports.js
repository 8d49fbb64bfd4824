// Import: the server reads a manifest or a directory tree under its import root as a background job; the page
// starts one, follows its progress live (files done, added, duplicates, failures with their reasons, ETA),
// cancels it, and lists the collection's import jobs.
import { api } from "../api.js";
import { fmt, guarded, h, toast } from "../dom.js";
import { cancelButton, followJob, LIVE } from "./jobs.js";

const source = (job) => (job.config.manifest !== undefined ? `manifest ${job.config.manifest}` : `directory ${job.config.directory}`);

function importBoard(job) {
  const bar = h("progress", { max: 1, value: 0, id: "import-progress", "aria-label": "Import progress" });
  const stats = h("dl", { class: "stats", id: "import-stats" });
  const failures = h("div", { id: "import-failures" });
  const outcome = h("div", { id: "import-outcome" });
  const cancel = cancelButton(job, "cancel-import", "Cancel import", "import");
  const board = h("section", { class: "card", id: "import-board", "aria-labelledby": "import-title", dataset: { job: job.id } },
    h("h2", { id: "import-title" }, `Import ${job.id}: ${source(job)}`), bar, stats, cancel, failures, outcome);

  function update(j) {
    const p = j.progress || {};
    board.dataset.state = j.state;
    bar.value = p.total_steps ? (p.step || 0) / p.total_steps : j.state === "succeeded" ? 1 : 0;
    const rows = [["State", j.state, "state"], ["Files", `${p.step ?? 0} of ${p.total_steps ?? "–"}`, "files"],
      ["Added", p.added ?? 0, "added"], ["Already in the collection", p.duplicates ?? 0, "duplicates"],
      ["Failed", p.failed ?? 0, "failed"], ["ETA", LIVE.includes(j.state) ? fmt.secs(p.eta_s) : "–", "eta"]];
    stats.replaceChildren(...rows.flatMap(([k, v, key]) => [h("dt", {}, k), h("dd", { dataset: { field: key } }, String(v))]));
    cancel.hidden = !LIVE.includes(j.state);
    const failed = p.failures || [];
    failures.replaceChildren(failed.length ? h("details", { open: true }, h("summary", {},
      p.failed > failed.length ? `The first ${failed.length} of ${p.failed} failed files` : `Failed files (${failed.length})`),
    h("ul", { class: "rejected" }, failed.map((f) => h("li", {}, h("span", { class: "path" }, f.path), `: ${f.reason}`)))) : "");
    outcome.replaceChildren(j.error ? h("p", { class: "error", role: "alert" }, j.error)
      : j.state === "succeeded" ? h("p", {}, "Done. ", h("a", { href: `#/c/${j.collection_id}/images` }, "See the images")) : "");
  }
  return { board, update };
}

export async function importView(body, collection, signal) {
  const base = `/collections/${collection.id}/import-jobs`;
  const kind = h("select", { id: "import-kind" },
    h("option", { value: "directory" }, "A directory"),
    h("option", { value: "manifest" }, "A manifest (.jsonl, .csv)"));
  const path = h("input", { id: "import-path", type: "text", required: true, autocomplete: "off", placeholder: "holiday/2024",
    "aria-describedby": "import-path-help" });
  const folders = h("input", { type: "checkbox", id: "import-folders", checked: true });
  const foldersLabel = h("label", { class: "check" }, folders, "Folder names are categories");
  kind.addEventListener("change", () => { foldersLabel.hidden = kind.value !== "directory"; });
  const problem = h("div", { id: "import-error" });
  const live = h("div", { id: "import-live" });
  const history = h("div", { id: "import-history" });

  function renderHistory(list) {
    history.replaceChildren(list.length ? h("div", { class: "scroll" }, h("table", { id: "import-jobs" },
      h("caption", {}, "Imports"),
      h("thead", {}, h("tr", {}, ["Job", "Source", "State", "Files", "Added", "Failed", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, [...list].reverse().map((j) => h("tr", { dataset: { job: j.id } },
        h("td", {}, String(j.id)), h("td", {}, source(j)), h("td", {}, j.state),
        h("td", { class: "num" }, `${j.progress.step ?? 0} / ${j.progress.total_steps ?? "–"}`),
        h("td", { class: "num" }, String(j.progress.added ?? 0)), h("td", { class: "num" }, String(j.progress.failed ?? 0)),
        h("td", {}, fmt.date(j.created_at)),
        h("td", {}, h("button", { class: "secondary small", onclick: guarded(() => watch(j)) }, LIVE.includes(j.state) ? "Watch" : "Show")))))))
      : h("p", { class: "muted" }, "No imports yet."));
  }

  async function watch(job) {
    const { board, update } = importBoard(job);
    live.replaceChildren(board);
    if (await followJob(job, update, signal)) renderHistory(await api("GET", base));
  }

  const form = h("form", { class: "card", "aria-labelledby": "import-form-title", onsubmit: guarded(async (e) => {
    e.preventDefault();
    problem.replaceChildren();
    const request = kind.value === "directory" ? { directory: path.value.trim(), folder_categories: folders.checked }
      : { manifest: path.value.trim() };
    let job;
    try {
      job = await api("POST", `/collections/${collection.id}/images/import`, request);
    } catch (err) {
      if (err.status === 401) return;
      // The server's reason, as it gave it: a path outside the import root, a missing manifest, no images found...
      problem.replaceChildren(h("p", { class: "error", role: "alert" }, `Not started (${err.status} ${err.code}): ${err.message}`));
      return;
    }
    toast(`Import ${job.id} queued`);
    renderHistory(await api("GET", base));
    await watch(job);
  }) },
  h("h2", { id: "import-form-title" }, "Import from the server"),
  h("p", {}, "The server reads the files itself, in the background: for folders too large to upload from this browser. ",
    "Files already in the collection (the same bytes) are not stored twice; their captions and category are updated."),
  h("div", { class: "fields" },
    h("div", {}, h("label", { for: "import-kind" }, "What"), kind),
    h("div", { class: "grow" }, h("label", { for: "import-path" }, "Path"), path,
      h("small", { id: "import-path-help", class: "muted" }, "Relative to the server’s import root (its --import-root). In a directory, every image "
        + "of its tree is read, with NAME.txt beside NAME.jpg as its captions"))),
  h("div", { class: "row" }, foldersLabel, h("button", { type: "submit", id: "start-import" }, "Start import")),
  problem);

  const jobs = await api("GET", base);
  body.replaceChildren(form, live, history);
  renderHistory(jobs);
  const running = [...jobs].reverse().find((j) => LIVE.includes(j.state));
  if (running) guarded(watch)(running); // not awaited: the screen is ready while the job streams on
}
