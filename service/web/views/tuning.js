// Tuning: start a job (defaults in one click, the rest folded away), watch it live over SSE, cancel it.
import { api } from "../api.js";
import { fmt, guarded, h, toast } from "../dom.js";
import { cancelButton, followJob, LIVE } from "./jobs.js";
import { activationSummary, comparisonTable, trainingCharts } from "./metrics.js";

// The settings form is built from the API's own schema, so its defaults and limits live in one place.
async function configSchema() {
  const spec = await api("GET", "/openapi.json");
  return spec.components.schemas;
}

function fieldFor(name, prop, schemas, prefix = "") {
  const id = `cfg-${prefix}${name}`;
  const types = (prop.anyOf || [prop]).map((p) => p.type).filter(Boolean);
  const nullable = types.includes("null");
  const label = h("label", { for: id, title: prop.description || "" }, prop.title || name);
  let input;
  if (prop.enum) {
    input = h("select", { id }, prop.enum.map((v) => h("option", { value: v, selected: v === prop.default }, v)));
  } else if (types.includes("boolean")) {
    input = h("input", { id, type: "checkbox", checked: !!prop.default });
  } else if (types.includes("integer") || types.includes("number")) {
    const numeric = (prop.anyOf || [prop]).find((p) => p.type === "integer" || p.type === "number");
    input = h("input", { id, type: "number", value: prop.default ?? "", inputmode: "decimal",
      step: numeric.type === "integer" ? 1 : "any", min: numeric.minimum ?? numeric.exclusiveMinimum, max: numeric.maximum ?? numeric.exclusiveMaximum,
      placeholder: nullable ? "empty: off" : "" });
  } else {
    input = h("input", { id, type: "text", value: prop.default ?? "" });
  }
  const read = () => {
    if (input.type === "checkbox") return input.checked;
    if (input.type === "number") return input.value === "" ? (nullable ? null : undefined) : Number(input.value);
    return input.value;
  };
  const help = prop.description ? h("small", { class: "muted" }, prop.description) : null;
  return { el: h("div", { class: "field" }, label, input, help), name, read, default: prop.default };
}

function settingsForm(schemas) {
  const config = schemas.TuningConfig;
  const fields = [];
  const groups = [];
  for (const [name, prop] of Object.entries(config.properties)) {
    const ref = prop.$ref || prop.allOf?.[0]?.$ref;
    const target = ref ? schemas[ref.split("/").at(-1)] : null;
    if (target?.enum) {  // a named vocabulary (method, activation): a select with the field's own default
      fields.push(fieldFor(name, { ...target, ...prop, title: prop.title || name }, schemas));
    } else if (target) {
      const nested = target;
      const inner = Object.entries(nested.properties).map(([n, p]) => fieldFor(n, p, schemas, `${name}-`));
      groups.push(h("fieldset", {}, h("legend", {}, nested.description || name), inner.map((f) => f.el)));
      fields.push({ name, read: () => Object.fromEntries(inner.map((f) => [f.name, f.read()]).filter(([, v]) => v !== undefined)),
        default: Object.fromEntries(inner.map((f) => [f.name, f.default])) });
    } else fields.push(fieldFor(name, prop, schemas));
  }
  const read = () => Object.fromEntries(fields.map((f) => [f.name, f.read()])
    .filter(([name, value]) => value !== undefined && JSON.stringify(value) !== JSON.stringify(fields.find((f) => f.name === name).default)));
  return { el: h("div", { class: "settings" }, h("div", { class: "field-grid" }, fields.filter((f) => f.el).map((f) => f.el)), groups), read };
}

function liveBoard(job) {
  const status = h("dl", { class: "stats", id: "job-stats" });
  const bar = h("progress", { max: 1, value: 0, id: "job-progress", "aria-label": "Training progress" });
  const charts = h("div", { id: "job-charts" });
  const result = h("div", { id: "job-result" });
  const cancel = cancelButton(job, "cancel-job", "Cancel", "job");
  const board = h("section", { class: "card", id: "job-board", "aria-labelledby": "job-title", dataset: { job: job.id } },
    h("h2", { id: "job-title" }, `Job ${job.id}`), bar, status, cancel, charts, result);
  const losses = new Map();
  const epochs = [];
  let zeroShot = null;
  let lastVal = null;
  let lastRun = null;

  function update(j) {
    const p = j.progress || {};
    board.dataset.state = j.state;
    if (p.run !== undefined && p.run !== lastRun) {  // a new run (candidate or fold) starts its own curves
      lastRun = p.run;
      losses.clear();
      epochs.length = 0;
      lastVal = null;
    }
    if (p.step !== undefined && p.loss !== undefined) losses.set(p.step, p.loss);
    if (p.val_zero_shot) zeroShot = p.val_zero_shot;
    if (p.val && JSON.stringify(p.val) !== lastVal) {
      lastVal = JSON.stringify(p.val);
      if (!epochs.length && zeroShot) epochs.push({ epoch: 0, metrics: zeroShot });
      epochs.push({ epoch: epochs.length, metrics: p.val });
    }
    // Run of runs: a job on marks alone trains once per cross-validation fold, then on every mark; a job with
    // method auto once per candidate recipe.
    const done = p.total_steps ? (p.runs ? (p.run - 1 + p.step / p.total_steps) / p.runs : p.step / p.total_steps) : 0;
    bar.value = j.state === "succeeded" ? 1 : done;
    const stats = [["State", j.state, "state"], ["Stage", p.stage || "–", "stage"],
      ["Epoch", p.epoch !== undefined ? `${p.epoch} of ${p.epochs}` : "–", "epoch"],
      ["Step", p.step !== undefined ? `${p.step} of ${p.total_steps}` : "–", "step"],
      ["ETA", LIVE.includes(j.state) ? fmt.secs(p.eta_s) : "–", "eta"],
      j.split_sizes.marked !== undefined
        ? ["Marked images (marks alone)", `${j.split_sizes.marked}${p.runs ? `, run ${p.run} of ${p.runs}` : ""}`, "split"]
        : ["Pairs (train / val / test)", ["train", "val", "test"].map((k) => j.split_sizes[k] ?? "–").join(" / "), "split"],
      ...(p.runs && j.split_sizes.marked === undefined ? [["Candidate recipe", `${p.run} of ${p.runs}`, "candidate"]] : [])];
    status.replaceChildren(...stats.flatMap(([k, v, key]) => [h("dt", {}, k), h("dd", { dataset: { field: key } }, String(v))]));
    cancel.hidden = !LIVE.includes(j.state);
    if (j.error) result.replaceChildren(h("p", { class: "error", role: "alert" }, j.error));
    charts.replaceChildren(trainingCharts([...losses.entries()].sort((a, b) => a[0] - b[0]).map(([, y]) => y), epochs, zeroShot));
  }

  async function finish(j) {
    update(j);
    if (j.state !== "succeeded" || !j.adapter_version) return;
    const adapter = await api("GET", `/collections/${j.collection_id}/adapters/${j.adapter_version}`);
    const report = adapter.report;
    charts.replaceChildren(trainingCharts(report.loss_curve || [], report.epochs || [], report.epochs?.[0]?.metrics));
    result.replaceChildren(
      comparisonTable([["Zero-shot", report.test?.zero_shot], [`Adapter ${adapter.name}`, report.test?.adapter]],
        { id: "job-test", caption: "Test pairs never used for training or early stopping", evidence: report.activation }),
      activationSummary(report, "job-activation"),
      h("p", { id: "job-outcome" }, `${adapter.name}: ${adapter.active ? "active" : "not active"} · ${adapter.note || ""} `,
        h("a", { href: `#/c/${j.collection_id}/adapters` }, "Manage adapters")));
  }
  return { board, update, finish };
}

async function watch(host, job, signal) {
  const { board, update, finish } = liveBoard(job);
  host.replaceChildren(board);
  const last = await followJob(job, update, signal);
  if (last) await finish(last);
}

export async function tuningView(body, collection, signal) {
  const base = `/collections/${collection.id}/tuning-jobs`;
  const [jobs, schemas] = await Promise.all([api("GET", base), configSchema()]);
  const settings = settingsForm(schemas);
  const live = h("div", { id: "live" });
  const history = h("div", { id: "job-history" });

  function renderHistory(list) {
    history.replaceChildren(list.length ? h("div", { class: "scroll" }, h("table", { id: "jobs" },
      h("caption", {}, "Jobs"),
      h("thead", {}, h("tr", {}, ["Job", "State", "Created", "Adapter", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, [...list].reverse().map((j) => h("tr", {},
        h("td", {}, String(j.id)), h("td", {}, j.state), h("td", {}, fmt.date(j.created_at)),
        h("td", {}, j.adapter_version ? `v${j.adapter_version}` : "–"),
        h("td", {}, h("button", { class: "secondary small", onclick: guarded(() => start(j)) }, LIVE.includes(j.state) ? "Watch" : "Show")))))))
      : h("p", { class: "muted" }, "No tuning jobs yet."));
  }

  async function start(job) {
    await watch(live, job, signal);
    renderHistory(await api("GET", base));
  }

  async function submit(config) {
    const job = await api("POST", base, config);
    toast(`Job ${job.id} queued`);
    renderHistory(await api("GET", base));
    await start(job);
  }

  body.replaceChildren(
    h("section", { class: "card", "aria-labelledby": "tune-title" },
      h("h2", { id: "tune-title" }, "Tune an adapter"),
      h("p", {}, `Learns a few prompt vectors from this collection’s captioned images (${collection.image_count} images). `,
        "A part of the pairs is held out: for early stopping and for the final test against zero-shot. ",
        "The new adapter is activated only if it is not worse on the test pairs."),
      h("div", { class: "row" }, h("button", { id: "start-default", onclick: guarded(() => submit(undefined)) }, "Start tuning with defaults")),
      h("details", { id: "advanced" }, h("summary", {}, "Advanced settings"), settings.el,
        h("div", { class: "row" }, h("button", { id: "start-custom", class: "secondary", onclick: guarded(() => submit(settings.read())) }, "Start with these settings")))),
    live, history);
  renderHistory(jobs);
  const running = [...jobs].reverse().find((j) => LIVE.includes(j.state));
  if (running) guarded(start)(running); // not awaited: the screen is ready while the job streams on
}
