// A collection's images: upload by drag and drop (files or folders; folder names become categories,
// a sidecar NAME.txt holds captions, one a line) with per-file progress, and a paginated thumbnail grid where
// one image's captions and category are edited in a dialog, or a selection's category at once.
import { api, blobUrl, forgetBlobs, uploadForm } from "../api.js";
import { guarded, h, toast } from "../dom.js";

const PAGE = 24;
const PARALLEL = 3;

export function thumbnail(path, alt) {
  const img = h("img", { alt, loading: "lazy", width: 160, height: 160 });
  blobUrl(`${path}?size=192`).then((url) => { img.src = url; }, () => img.classList.add("broken"));
  return img;
}

/** Every category in use, sorted (read from the listing: the API has no category list of its own). */
export async function collectionCategories(collectionId) {
  const found = new Set();
  for (let offset = 0; ; offset += 1000) {
    const page = await api("GET", `/collections/${collectionId}/images?offset=${offset}&limit=1000`);
    page.items.forEach((image) => image.category && found.add(image.category));
    if (offset + page.items.length >= page.total || !page.items.length) break;
  }
  return [...found].sort((a, b) => a.localeCompare(b));
}

// Files from a folder drop, with their paths relative to the dropped item.
async function entryFiles(entry, prefix = "") {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    return [{ file, path: prefix + entry.name }];
  }
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) return out;
    for (const child of batch) out.push(...await entryFiles(child, `${prefix}${entry.name}/`));
  }
}

const stem = (path) => path.replace(/\.[^./]+$/, "");

/** Pairs images with their caption files; the folder an image sits in is its category. */
async function plan(found) {
  const visible = found.filter(({ path }) => !path.split("/").some((part) => part.startsWith(".")));
  const captionFiles = new Map(visible.filter(({ path }) => /\.txt$/i.test(path)).map((f) => [stem(f.path), f.file]));
  const images = visible.filter(({ path }) => !/\.txt$/i.test(path)).sort((a, b) => a.path.localeCompare(b.path));
  return Promise.all(images.map(async ({ file, path }) => {
    const folders = path.split("/").slice(0, -1);
    const captionFile = captionFiles.get(stem(path));
    const captions = captionFile ? (await captionFile.text()).split(/\r?\n/).map((s) => s.trim()).filter(Boolean) : [];
    return { file, path, category: folders.at(-1) || null, captions };
  }));
}

function uploadRow(item) {
  const bar = h("progress", { max: 1, value: 0, "aria-label": `Upload of ${item.path}` });
  const status = h("span", { class: "status" }, "waiting");
  const row = h("li", { dataset: { state: "waiting" } },
    h("span", { class: "path" }, item.path), item.category ? h("span", { class: "badge" }, item.category) : null,
    item.captions.length ? h("span", { class: "muted" }, `${item.captions.length} caption${item.captions.length > 1 ? "s" : ""}`) : null,
    bar, status);
  const set = (state, text) => { row.dataset.state = state; status.textContent = text; };
  return { row, bar, set };
}

export async function imagesView(body, collection) {
  const base = `/collections/${collection.id}/images`;
  let offset = 0;
  const grid = h("ul", { class: "grid", id: "grid", "aria-label": "Images" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const progressList = h("ul", { class: "uploads", id: "uploads", "aria-label": "Uploads" });
  const summary = h("p", { id: "upload-summary", role: "status" });
  const rejectedList = h("ul", { id: "rejected", class: "rejected" });

  const selected = new Set();
  const selectedCount = h("span", { id: "selected-count", role: "status" }, "0 selected");
  const bulkCategory = h("input", { id: "bulk-category", autocomplete: "off", list: "known-categories" });
  const bulkApply = h("button", { type: "button", disabled: true }, "Set category");
  const knownCategories = h("datalist", { id: "known-categories" });
  const updateSelection = () => {
    selectedCount.textContent = `${selected.size} selected`;
    bulkApply.disabled = !selected.size;
  };
  const edit = editDialog(base, async () => showPage());

  // The bulk endpoint selects by filter, not by id, so a hand-picked selection is edited one image at a time.
  bulkApply.addEventListener("click", guarded(async () => {
    const category = bulkCategory.value.trim() || null;
    const ids = [...selected];
    await Promise.all(ids.map((id) => api("PATCH", `${base}/${id}`, { category })));
    selected.clear();
    updateSelection();
    toast(category ? `${ids.length} images now in “${category}”.` : `Category cleared on ${ids.length} images.`);
    await showPage();
  }));

  async function showPage() {
    const [page, categories] = await Promise.all([
      api("GET", `${base}?offset=${offset}&limit=${PAGE}`), collectionCategories(collection.id)]);
    knownCategories.replaceChildren(...categories.map((c) => h("option", { value: c })));
    const pages = Math.max(1, Math.ceil(page.total / PAGE));
    const current = Math.floor(offset / PAGE) + 1;
    grid.replaceChildren(...page.items.map((image) => {
      const name = image.captions[0] || image.filename;
      const pick = h("input", { type: "checkbox", class: "pick", checked: selected.has(image.id), "aria-label": `Select ${name}`,
        onchange: (e) => { if (e.target.checked) selected.add(image.id); else selected.delete(image.id); updateSelection(); } });
      return h("li", { class: "tile", dataset: { image: image.id } },
        thumbnail(image.thumbnail_url, name),
        h("div", { class: "meta" },
          image.category ? h("span", { class: "badge" }, image.category) : null,
          h("span", { class: "caption", title: image.captions.join("\n") }, name),
          h("div", { class: "tile-actions" }, pick,
            h("button", { type: "button", class: "small secondary", "aria-label": `Edit ${name}`, onclick: () => edit(image) }, "Edit"))));
    }));
    if (!page.total) grid.replaceChildren(h("li", { class: "muted" }, "No images yet."));
    pager.replaceChildren(
      h("button", { class: "secondary", disabled: current <= 1, onclick: guarded(async () => { offset -= PAGE; await showPage(); }) }, "Previous"),
      h("span", { id: "page-info" }, `Page ${current} of ${pages} · ${page.total} images`),
      h("button", { class: "secondary", disabled: current >= pages, onclick: guarded(async () => { offset += PAGE; await showPage(); }) }, "Next"));
  }

  async function upload(found) {
    const items = await plan(found);
    const rows = items.map(uploadRow);
    progressList.replaceChildren(...rows.map((r) => r.row));
    rejectedList.replaceChildren();
    const counts = { added: 0, duplicate: 0, rejected: 0 };
    summary.textContent = `Uploading ${items.length} files…`;
    const reject = (item, reason) => {
      counts.rejected += 1;
      rejectedList.append(h("li", {}, h("strong", {}, item.path), `: ${reason}`));
      rejectedList.parentElement.open = true;
    };
    let next = 0;
    async function worker() {
      while (next < items.length) {
        const i = next++;
        const { set, bar } = rows[i];
        const item = items[i];
        const form = new FormData();
        form.append("files", item.file, item.file.name);
        form.append("metadata", JSON.stringify([{ captions: item.captions, category: item.category }]));
        set("sending", "sending");
        try {
          const result = await uploadForm(base, form, (p) => { bar.value = p; });
          bar.value = 1;
          const ok = result.accepted[0];
          if (ok) {
            counts[ok.duplicate ? "duplicate" : "added"] += 1;
            set(ok.duplicate ? "duplicate" : "added", ok.duplicate ? `already here as #${ok.id}` : `added as #${ok.id}`);
          } else {
            const reason = result.rejected[0]?.reason || "rejected";
            set("rejected", `rejected: ${reason}`);
            reject(item, reason);
          }
        } catch (err) {
          if (err.status === 401) throw err;
          set("rejected", `rejected: ${err.message}`);
          reject(item, err.message);
        }
      }
    }
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    summary.textContent = `${counts.added} added, ${counts.duplicate} already in the collection, ${counts.rejected} rejected.`;
    forgetBlobs(base);
    await showPage();
  }

  const filesInput = h("input", { type: "file", multiple: true, id: "pick-files", class: "visually-hidden", tabindex: -1,
    onchange: guarded(async (e) => { const files = [...e.target.files].map((f) => ({ file: f, path: f.name })); e.target.value = ""; await upload(files); }) });
  const folderInput = h("input", { type: "file", multiple: true, webkitdirectory: true, id: "pick-folder", class: "visually-hidden", tabindex: -1,
    onchange: guarded(async (e) => { const files = [...e.target.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name })); e.target.value = ""; await upload(files); }) });
  const drop = h("section", { class: "drop", id: "drop", "aria-labelledby": "drop-title",
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: guarded(async (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
      const found = entries.length ? (await Promise.all(entries.map((en) => entryFiles(en)))).flat()
        : [...e.dataTransfer.files].map((f) => ({ file: f, path: f.name }));
      await upload(found);
    }) },
  h("h2", { id: "drop-title" }, "Add images"),
  h("p", {}, "Drop image files or whole folders here. A folder’s name becomes the category of the images in it; ",
    "a text file beside an image with the same name (", h("code", {}, "cat1.txt"), " for ", h("code", {}, "cat1.jpg"),
    ") gives its captions, one per line. Captioned images are what tuning learns from."),
  h("div", { class: "row" },
    h("button", { type: "button", onclick: () => filesInput.click() }, "Choose files"),
    h("button", { type: "button", class: "secondary", onclick: () => folderInput.click() }, "Choose a folder")),
  filesInput, folderInput, summary, progressList,
  h("details", { id: "rejected-box" }, h("summary", {}, "Rejected files"), rejectedList));

  const bulk = h("section", { class: "row bulk", id: "bulk", "aria-label": "Edit the selected images" },
    selectedCount,
    h("label", { for: "bulk-category", class: "inline" }, "Category for the selection"), bulkCategory, knownCategories, bulkApply,
    h("button", { type: "button", class: "secondary", onclick: guarded(async () => { selected.clear(); updateSelection(); await showPage(); }) },
      "Clear selection"));
  body.replaceChildren(drop, h("h2", {}, "Images"), bulk, pager, grid, edit.dialog);
  await showPage();
}

/** The dialog that edits one image's captions (one per line) and category; `saved` runs after a change. */
function editDialog(base, saved) {
  const captions = h("textarea", { id: "edit-captions", rows: 4 });
  const category = h("input", { id: "edit-category", autocomplete: "off", list: "known-categories" });
  const title = h("h2", { id: "edit-title" });
  let imageId = null;
  const dialog = h("dialog", { id: "edit-image", "aria-labelledby": "edit-title" },
    h("form", { method: "dialog", onsubmit: guarded(async (e) => {
      if (e.submitter?.value !== "save") return;
      e.preventDefault();
      await api("PATCH", `${base}/${imageId}`, {
        captions: captions.value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean),
        category: category.value.trim() || null,
      });
      dialog.close();
      toast("Saved.");
      await saved();
    }) },
    title,
    h("label", { for: "edit-captions" }, "Captions, one per line"), captions,
    h("label", { for: "edit-category" }, "Category (empty: none)"), category,
    h("div", { class: "row" },
      h("button", { value: "cancel", class: "secondary", formnovalidate: true }, "Cancel"),
      h("button", { value: "save" }, "Save"))));
  const open = (image) => {
    imageId = image.id;
    title.textContent = `Edit ${image.filename} (#${image.id})`;
    captions.value = image.captions.join("\n");
    category.value = image.category || "";
    dialog.showModal();
    captions.focus();
  };
  open.dialog = dialog;
  return open;
}
