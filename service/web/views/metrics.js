// Tables and charts of retrieval metrics, shared by the tuning and adapter screens.
import { lineChart } from "../chart.js";
import { fmt, h, wilson } from "../dom.js";

const COLUMNS = [["t2i_r1", "Text→image R@1"], ["t2i_r5", "R@5"], ["t2i_r10", "R@10"], ["i2t_r1", "Image→text R@1"]];

function cell(metrics, key) {
  const value = metrics?.[key];
  if (value === undefined) return h("td", {}, "–");
  const n = key.startsWith("t2i") ? metrics.n_captions : metrics.n_images;
  const ci = wilson(value, n);
  return h("td", { class: "num", dataset: { metric: key } }, fmt.pct(value),
    ci ? h("small", { class: "ci" }, ` [${(100 * ci[0]).toFixed(0)}–${(100 * ci[1]).toFixed(0)}]`) : null);
}

/** rows: [[label, metrics]]; metrics as the service stores them (fractions, with n_captions and n_images). */
export function comparisonTable(rows, { id, caption }) {
  const n = rows.find(([, m]) => m)?.[1];
  return h("div", { class: "scroll" }, h("table", { id, class: "metrics" },
    h("caption", {}, caption, n ? h("span", { class: "muted" }, ` · ${n.n_captions} captions, ${n.n_images} images; 95 % Wilson intervals`) : null),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), COLUMNS.map(([, label]) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, rows.map(([label, metrics]) => h("tr", {}, h("th", { scope: "row" }, label),
      COLUMNS.map(([key]) => cell(metrics, key)))))));
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
