// Tables and charts of retrieval metrics, shared by the tuning and adapter screens.
import { lineChart } from "../chart.js";
import { fmt, h, wilson } from "../dom.js";

const COLUMNS = [["t2i_r1", "Text→image R@1"], ["t2i_r5", "R@5"], ["t2i_r10", "R@10"], ["i2t_r1", "Image→text R@1"]];

function cell(metrics, key, intervals) {
  const value = metrics?.[key];
  if (value === undefined) return h("td", {}, "–");
  const n = key.startsWith("t2i") ? metrics.n_captions : metrics.n_images;
  const ci = intervals && wilson(value, n);
  return h("td", { class: "num", dataset: { metric: key } }, fmt.pct(value),
    ci ? h("small", { class: "ci" }, ` [${(100 * ci[0]).toFixed(0)}–${(100 * ci[1]).toFixed(0)}]`) : null);
}

/** rows: [[label, metrics]]; metrics as the service stores them (fractions, with n_captions and n_images).
 * With the server's activation evidence (a tuned version), its paired interval of the gain is the one shown
 * (activationSummary); per-cell Wilson intervals are only the fallback for reports without it. */
export function comparisonTable(rows, { id, caption, evidence }) {
  const n = rows.find(([, m]) => m)?.[1];
  const intervals = !evidence;
  return h("div", { class: "scroll" }, h("table", { id, class: "metrics" },
    h("caption", {}, caption, n ? h("span", { class: "muted" }, ` · ${n.n_captions} captions, ${n.n_images} images`
      + (intervals ? "; 95 % Wilson intervals" : "")) : null),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), COLUMNS.map(([, label]) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, rows.map(([label, metrics]) => h("tr", {}, h("th", { scope: "row" }, label),
      COLUMNS.map(([key]) => cell(metrics, key, intervals)))))));
}

const METRIC_LABELS = { t2i_r1: "R@1", cat_p10: "category P@10", marks_ap: "AP of the marked searches" };
const signed = (x) => `${x < 0 ? "−" : "+"}${Math.abs(x).toFixed(3)}`;

/** A tuned version's report as sentences: the activation decision with the server's interval of the gain,
 * and what the job took from the user's marks. Nothing for a report without them (an uploaded adapter). */
export function activationSummary(report, id) {
  const a = report?.activation;
  const f = report?.feedback;
  const parts = [];
  if (a) {
    const metric = METRIC_LABELS[a.metric] || a.metric;
    parts.push(h("p", { class: "evidence", dataset: { field: "activation" } },
      `gain ${signed(a.gain.mean)} ${metric}, ${Math.round(100 * a.level)} % interval ${signed(a.gain.low)} to ${signed(a.gain.high)}`
      + ` over ${a.queries} queries: ${a.activated ? "activated" : "kept inactive"}`,
      h("small", { class: "muted" }, ` (${a.metric === "marks_ap" ? "cross-validated" : "test"} ${metric} ${a.adapter.toFixed(3)} vs ${a.baseline.toFixed(3)} of ${a.baseline_name === "none" ? "zero-shot" : a.baseline_name}; `
        + `policy ${a.policy}, min_gain ${a.min_gain}; paired bootstrap)`)));
  }
  if (f) {
    const skipped = f.relevant_skipped_held_out + f.relevant_skipped_no_text;
    parts.push(h("p", { dataset: { field: "feedback" } },
      `Marks: ${f.relevant_used} relevant used for training (${f.images_added} images added), ${skipped} relevant skipped `
      + `(${f.relevant_skipped_held_out} on held-out images, ${f.relevant_skipped_no_text} without a query text), `
      + `${f.not_relevant_used} not relevant used as negatives, ${f.not_relevant_skipped_held_out + f.not_relevant_skipped_no_positive + f.not_relevant_skipped_no_text} skipped `
      + `(${f.not_relevant_skipped_held_out} on held-out images, ${f.not_relevant_skipped_no_positive} for a query that trains no image, ${f.not_relevant_skipped_no_text} without a query text).`));
  }
  if (report?.templated_captions) {
    parts.push(h("p", { class: "muted", dataset: { field: "templated" } },
      `${report.templated_captions} images trained with captions made from their category.`));
  }
  return parts.length ? h("div", { id, class: "activation" }, parts) : null;
}

/** Loss per step and held-out recall per epoch; `epochs` as the trainer records them (epoch 0 = before training). */
export function trainingCharts(loss, epochs, zeroShot) {
  const recall = (key) => epochs.filter((e) => e.metrics).map((e) => [e.epoch, e.metrics[key]]);
  const series = [{ name: "R@1", points: recall("t2i_r1") }, { name: "R@5", points: recall("t2i_r5") }];
  if (zeroShot) {
    const xs = epochs.map((e) => e.epoch);
    const span = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
    series.push({ name: "zero-shot R@1", dashed: true, points: span.map((x) => [x, zeroShot.t2i_r1]) });
  }
  return h("div", { class: "charts" },
    lineChart({ title: "Training loss per step", xLabel: "step", series: [{ name: "loss", points: loss.map((y, i) => [i + 1, y]) }] }),
    lineChart({ title: "Held-out text→image recall per epoch", xLabel: "epoch", yMin: 0, yMax: 1, series }));
}
