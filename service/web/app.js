// The page's shell: hash routes, breadcrumbs, sign-in with an API key.
import { api, apiKey, setApiKey, whenUnauthorized } from "./api.js";
import { $, h, toast } from "./dom.js";
import { adaptersView } from "./views/adapters.js";
import { collectionsView } from "./views/collections.js";
import { imagesView } from "./views/images.js";
import { importView } from "./views/imports.js";
import { searchView } from "./views/search.js";
import { tuningView } from "./views/tuning.js";

const TABS = [
  ["images", "Images", imagesView],
  ["import", "Import", importView],
  ["search", "Search", searchView],
  ["tuning", "Tuning", tuningView],
  ["adapters", "Adapters", adaptersView],
];

let leaving = new AbortController(); // aborted when the route changes: stops live streams of the old screen

function renderAccount() {
  const box = $("#account");
  box.replaceChildren(apiKey()
    ? h("button", { class: "link", onclick: () => { setApiKey(null); route(); } }, "Sign out")
    : h("a", { href: "#/sign-in" }, "API key"));
}

function signInView(main) {
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "card narrow", onsubmit: (e) => {
    e.preventDefault();
    setApiKey(input.value.trim());
    renderAccount();
    location.hash = sessionStorage.getItem("pas-after-sign-in") || "#/"; // the hashchange re-renders
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "This service asks for an API key. It is kept for this browser tab only."),
  h("label", { for: "api-key" }, "API key"), input,
  h("div", { class: "row" }, h("button", { type: "submit" }, "Sign in")));
  main.replaceChildren(form);
  input.focus();
}

function crumbs(items) {
  $("#crumbs").replaceChildren(...items.map(([label, href]) => href ? h("a", { href }, label) : h("span", { "aria-current": "page" }, label)));
}

async function collectionShell(main, id, tab, signal) {
  const collection = await api("GET", `/collections/${id}`);
  crumbs([["Collections", "#/"], [collection.name]]);
  document.title = `${collection.name} · Prompt adapters`;
  const body = h("div", { id: "tab-body" });
  main.replaceChildren(
    h("h1", {}, collection.name),
    collection.description ? h("p", { class: "muted" }, collection.description) : "", // replaceChildren writes null as "null"
    h("nav", { class: "tabs", "aria-label": "Collection" }, TABS.map(([key, label]) =>
      h("a", { href: `#/c/${id}/${key}`, "aria-current": key === tab ? "page" : null, id: `tab-${key}` }, label))),
    body,
  );
  const view = TABS.find(([key]) => key === tab)?.[2] || imagesView;
  await view(body, collection, signal);
}

export async function route() {
  leaving.abort();
  leaving = new AbortController();
  const main = $("#main");
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  renderAccount();
  try {
    if (parts[0] === "sign-in") {
      crumbs([]);
      signInView(main);
    } else if (parts[0] === "c" && /^\d+$/.test(parts[1])) {
      await collectionShell(main, Number(parts[1]), parts[2] || "images", leaving.signal);
    } else {
      crumbs([["Collections"]]);
      document.title = "Collections · Prompt adapters";
      await collectionsView(main, leaving.signal);
    }
  } catch (err) {
    if (err.status === 401 || err.name === "AbortError") return;
    main.replaceChildren(h("div", { class: "card error", role: "alert" }, h("h1", {}, "Something went wrong"),
      h("p", {}, err.message), h("a", { href: "#/" }, "Back to the collections")));
  }
}

whenUnauthorized(() => {
  if (location.hash !== "#/sign-in") sessionStorage.setItem("pas-after-sign-in", location.hash || "#/");
  if (apiKey()) toast("That API key was refused.", "error");
  setApiKey(null);
  location.hash = "#/sign-in";
});

// After a navigation, keyboard and screen-reader users continue in the new screen, not in the old link.
window.addEventListener("hashchange", async () => {
  await route();
  if (!document.activeElement || document.activeElement === document.body) $("#main").focus({ preventScroll: true });
});
route();
