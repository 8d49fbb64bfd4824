// Collections: the list with counts, index and adapter state; create; delete with confirmation.
import { api } from "../api.js";
import { confirmDelete, guarded, h, toast } from "../dom.js";

async function adapterState(collection) {
  const versions = await api("GET", `/collections/${collection.id}/adapters`);
  const active = versions.find((v) => v.active);
  return active ? `${active.name} active (${versions.length} version${versions.length > 1 ? "s" : ""})`
    : versions.length ? `zero-shot (${versions.length} inactive version${versions.length > 1 ? "s" : ""})` : "zero-shot";
}

function indexState(collection) {
  return collection.indexes.map((i) => `${i.space}: ${i.kind}, ${i.size}`).join("; ") || "empty";
}

export async function collectionsView(main, signal) {
  const collections = await api("GET", "/collections");
  const states = await Promise.all(collections.map(adapterState));
  const rows = collections.map((c, i) => h("tr", { dataset: { collection: c.id } },
    h("td", {}, h("a", { href: `#/c/${c.id}/images` }, c.name)),
    h("td", { class: "num", dataset: { field: "images" } }, String(c.image_count)),
    h("td", { dataset: { field: "index" } }, indexState(c)),
    h("td", { dataset: { field: "adapter" } }, states[i]),
    h("td", {}, h("button", { class: "danger small", "aria-label": `Delete collection ${c.name}`,
      onclick: guarded(async () => {
        if (!await confirmDelete(`Delete “${c.name}” with its ${c.image_count} images, indexes and adapters? This cannot be undone.`)) return;
        await api("DELETE", `/collections/${c.id}`);
        toast(`Deleted ${c.name}`);
        await collectionsView(main, signal);
      }) }, "Delete")),
  ));

  const name = h("input", { id: "new-name", required: true, maxlength: 200, autocomplete: "off" });
  const description = h("input", { id: "new-description", maxlength: 5000, autocomplete: "off" });
  const create = h("form", { class: "card", onsubmit: guarded(async (e) => {
    e.preventDefault();
    const created = await api("POST", "/collections", { name: name.value, description: description.value || null });
    location.hash = `#/c/${created.id}/images`;
  }) },
  h("h2", {}, "New collection"),
  h("div", { class: "fields" },
    h("div", {}, h("label", { for: "new-name" }, "Name"), name),
    h("div", {}, h("label", { for: "new-description" }, "Description (optional)"), description)),
  h("div", { class: "row" }, h("button", { type: "submit" }, "Create collection")));

  main.replaceChildren(
    h("h1", {}, "Collections"),
    collections.length
      ? h("div", { class: "scroll" }, h("table", { id: "collections" },
        h("thead", {}, h("tr", {}, ["Name", "Images", "Index", "Adapter", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows)))
      : h("p", { class: "muted", id: "no-collections" }, "No collections yet: create one below, then upload images."),
    create,
  );
}
