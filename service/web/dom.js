// Tiny DOM helpers: build elements without innerHTML, so no text from the server is ever parsed as HTML.
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2).toLowerCase(), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function toast(message, kind = "info") {
  const box = $("#toast");
  box.textContent = message;
  box.className = `show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, 5000);
}

export function confirmDelete(message, action = "Delete") {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = message;
  $("#confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

export const fmt = {
  pct: (x) => (x === undefined || x === null ? "–" : `${(100 * x).toFixed(1)} %`),
  bytes: (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`),
  date: (s) => (s ? new Date(s).toLocaleString() : "–"),
  secs: (s) => (s === undefined || s === null ? "–" : s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`),
  score: (x) => x.toFixed(3),
};

// 95 % Wilson interval of a recall measured on n queries.
export function wilson(p, n) {
  if (!n) return null;
  const z = 1.96;
  const centre = (p + (z * z) / (2 * n)) / (1 + (z * z) / n);
  const half = (z / (1 + (z * z) / n)) * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n));
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

// Report an async handler's failure instead of leaving a rejected promise in the console.
export function guarded(fn) {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (err) {
      if (err?.status !== 401) toast(err.message || String(err), "error");
    }
  };
}
