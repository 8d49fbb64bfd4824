// Adapters: versions with their test metrics, activate / roll back / delete / download / upload.
import { api, download, uploadForm } from "../api.js";
import { confirmDelete, fmt, guarded, h, toast } from "../dom.js";
import { activationSummary, comparisonTable, trainingCharts } from "./metrics.js";

export async function adaptersView(body, collection) {
  const base = `/collections/${collection.id}/adapters`;
  const detail = h("div", { id: "adapter-detail" });

  async function render() {
    const versions = await api("GET", base);
    const active = versions.find((v) => v.active);
    const act = (label, fn, cls = "secondary small") => h("button", { class: cls, onclick: guarded(async () => { await fn(); await render(); }) }, label);
    const rows = versions.map((v) => h("tr", { dataset: { version: v.version, active: v.active } },
      h("th", { scope: "row" }, v.name),
      h("td", {}, v.active ? h("strong", { class: "badge on" }, "active") : "inactive"),
      h("td", {}, v.method),
      h("td", { class: "num", dataset: { field: "r1" } }, fmt.pct(v.metrics.test?.t2i_r1)),
      h("td", { class: "num", dataset: { field: "r1-zero-shot" } }, fmt.pct(v.metrics.test_zero_shot?.t2i_r1)),
      h("td", { class: "num" }, `${v.param_count.toLocaleString()} · ${fmt.bytes(v.size_bytes)}`),
      h("td", {}, fmt.date(v.created_at)),
      h("td", { class: "actions" },
        h("button", { class: "secondary small", onclick: guarded(() => showDetail(v.version)) }, "Details"),
        v.active ? null : act("Activate", async () => { await api("POST", `${base}/${v.version}/activate`); toast(`${v.name} is active`); }),
        h("button", { class: "secondary small", onclick: guarded(() => download(v.file_url, `${collection.name}-${v.name}.safetensors`)) }, "Download"),
        act("Delete", async () => {
          if (!await confirmDelete(`Delete adapter ${v.name}${v.active ? " (the active one: search goes back to zero-shot)" : ""}?`)) return;
          await api("DELETE", `${base}/${v.version}${v.active ? "?force=true" : ""}`);
          toast(`Deleted ${v.name}`);
        }, "danger small"))));

    const file = h("input", { type: "file", id: "adapter-file", accept: ".safetensors", required: true });
    const activate = h("input", { type: "checkbox", id: "adapter-activate" });
    const upload = h("form", { class: "card", onsubmit: guarded(async (e) => {
      e.preventDefault();
      const form = new FormData();
      form.append("file", file.files[0]);
      form.append("activate", activate.checked);
      const row = await uploadForm(base, form, () => {});
      toast(`Uploaded as ${row.name}`);
      await render();
    }) },
    h("h2", {}, "Upload an adapter"),
    h("div", { class: "fields" }, h("div", {}, h("label", { for: "adapter-file" }, "Adapter file (.safetensors)"), file),
      h("label", { class: "check" }, activate, "Activate it")),
    h("div", { class: "row" }, h("button", { type: "submit", class: "secondary" }, "Upload")));

    body.replaceChildren(
      h("section", { class: "card", "aria-labelledby": "serving" },
        h("h2", { id: "serving" }, "Serving"),
        h("p", { id: "serving-state" }, active ? `Search uses adapter ${active.name}.` : "Search uses the zero-shot backbone (no adapter)."),
        active ? h("div", { class: "row" }, act("Roll back to zero-shot", async () => {
          await api("POST", `${base}/none/activate`);
          toast("Rolled back to zero-shot");
        }, "danger")) : null),
      versions.length ? h("div", { class: "scroll" }, h("table", { id: "adapters" },
        h("caption", {}, "Versions (test R@1: text→image on the job’s held-out test pairs)"),
        h("thead", {}, h("tr", {}, ["Version", "State", "Method", "Test R@1", "Zero-shot R@1", "Parameters · size", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows)))
        : h("p", { class: "muted", id: "no-adapters" }, "No adapters yet: tune one in the Tuning tab, or upload one below."),
      detail, upload);
  }

  async function showDetail(version) {
    const a = await api("GET", `${base}/${version}`);
    const r = a.report || {};
    const test = r.test || {};
    const rows = [["Zero-shot", test.zero_shot], [`Adapter ${a.name}`, test.adapter]];
    if (test.baseline && !["none", "zero-shot"].includes(test.baseline_name)) rows.push([`Then active (${test.baseline_name})`, test.baseline]);
    detail.replaceChildren(h("section", { class: "card", "aria-labelledby": "detail-title" },
      h("h2", { id: "detail-title", tabindex: -1 }, `Adapter ${a.name}`),
      h("p", {}, a.note || ""),
      h("dl", { class: "stats" },
        h("dt", {}, "Method"), h("dd", {}, a.method),
        h("dt", {}, "Parameters"), h("dd", {}, a.param_count.toLocaleString()),
        h("dt", {}, "File size"), h("dd", {}, fmt.bytes(a.size_bytes)),
        h("dt", {}, "Job"), h("dd", {}, a.job_id ? String(a.job_id) : "uploaded"),
        r.marks ? [h("dt", {}, "Trained on marks alone"), h("dd", {}, `${r.split_sizes.train} images, ${r.split_sizes.marked_queries} searches (${r.split_sizes.judged_queries} judged out of fold)`)]
          : r.split_sizes ? [h("dt", {}, "Pairs (train / val / test)"), h("dd", {}, `${r.split_sizes.train} / ${r.split_sizes.val} / ${r.split_sizes.test}`)] : null,
        r.candidates ? [h("dt", {}, "Candidates (val R@1)"), h("dd", { id: "adapter-candidates" }, r.candidates.candidates
          .map((c) => `${c.name}: ${fmt.pct(c.val.t2i_r1)}${c.chosen ? " (kept)" : ""}`).join(" · "))] : null),
      test.adapter ? comparisonTable(rows, { id: "adapter-test", caption: "Test pairs never used for training or early stopping", evidence: r.activation })
        : h("p", { class: "muted" }, r.marks ? "No test pairs: trained and judged on the marked searches alone (below)."
          : "No test metrics (an uploaded adapter)."),
      activationSummary(r, "adapter-activation"),
      r.epochs ? trainingCharts(r.loss_curve || [], r.epochs, r.epochs[0]?.metrics) : null));
    detail.querySelector("h2").focus();
  }

  await render();
}
