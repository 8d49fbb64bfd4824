// The HTTP API, with the session's API key (if any) on every request.
const KEY = "pas-api-key";
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const apiKey = () => sessionStorage.getItem(KEY);
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}
export function whenUnauthorized(handler) { onUnauthorized = handler; }

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function check(response) {
  if (response.status === 401) {
    onUnauthorized();
    throw new ApiError(401, "unauthorized", "This service needs an API key.");
  }
  if (!response.ok) {
    let detail = response.statusText;
    let code = `http_${response.status}`;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      code = body.code || code;
    } catch { /* not JSON: keep the status text */ }
    throw new ApiError(response.status, code, detail);
  }
  return response;
}

export async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await check(await fetch(path, init));
  return response.status === 204 ? null : response.json();
}

// Image and file URLs need the key too, so they are fetched and shown as object URLs.
const blobCache = new Map();
export async function blobUrl(path) {
  if (!blobCache.has(path)) {
    const pending = fetch(path, { headers: authHeaders() }).then(check).then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob));
    pending.catch(() => blobCache.delete(path));
    blobCache.set(path, pending);
  }
  return blobCache.get(path);
}
export function forgetBlobs(prefix) {
  for (const [path, pending] of blobCache) {
    if (path.startsWith(prefix)) {
      blobCache.delete(path);
      pending.then((url) => URL.revokeObjectURL(url), () => {});
    }
  }
}

export async function download(path, filename) {
  const response = await check(await fetch(path, { headers: authHeaders() }));
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function uploadForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload did not reach the server"));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* empty or not JSON */ }
      if (xhr.status === 401) {
        onUnauthorized();
        reject(new ApiError(401, "unauthorized", "This service needs an API key."));
      } else if (xhr.status === 422 && body?.code === "all_rejected") {
        resolve(body);  // every file refused: the same accepted/rejected lists, each rejection with its reason
      } else if (xhr.status >= 400) {
        reject(new ApiError(xhr.status, body?.code || `http_${xhr.status}`, body?.detail || xhr.statusText));
      } else resolve(body);
    };
    xhr.send(form);
  });
}

// Server-sent events read over fetch, so that the Authorization header is sent (EventSource cannot send it).
export async function streamEvents(path, onEvent, signal) {
  const response = await check(await fetch(path, { headers: authHeaders({ Accept: "text/event-stream" }), signal }));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}
