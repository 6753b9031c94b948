// The search page: plain JavaScript against the JSON API, no build step.
// Every search is a state ({q, like, photo, type, mode, minScore, collapse}) kept in the address
// (history.pushState), so Back, Forward, reloads and bookmarks give the same search again.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const query = $("q");
const fileInput = $("file");
const drop = $("drop");
const preview = $("preview");
const clearImage = $("clear-image");
const statusLine = $("status");
const anchor = $("anchor");
const results = $("results");
const K = 24;
// Chromium gives these no MIME type: accepted by name, and the server's decoder decides.
const UNTYPED_IMAGES = /\.(heic|heif|avif|jxl)$/i;
const TOUCH = matchMedia("(pointer: coarse)").matches || navigator.maxTouchPoints > 0;
let chosenImage = null;
let current = null; // the state on screen

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    const error = new Error(detail || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- state, controls and the address ------------------------------------------------------------

function controls() {
  const minScore = $("min-score").value.trim();
  return {
    type: document.querySelector('input[name="type"]:checked').value,
    mode: $("mode").value,
    minScore: minScore === "" ? null : minScore,
    collapse: $("collapse").checked,
  };
}

function showControls(state) {
  document.querySelector(`input[name="type"][value="${state.type}"]`).checked = true;
  $("mode").value = state.mode;
  $("min-score").value = state.minScore ?? "";
  $("collapse").checked = state.collapse;
  query.value = state.q ?? "";
}

function fromAddress(search) {
  const p = new URLSearchParams(search);
  const like = parseInt(p.get("like"), 10);
  return {
    q: p.get("q"),
    like: like > 0 ? like : null,
    photo: p.get("photo"),
    type: ["image", "text", "any"].includes(p.get("type")) ? p.get("type") : "image",
    mode: ["vector", "keyword", "hybrid"].includes(p.get("mode")) ? p.get("mode") : "vector",
    minScore: p.get("min_score"),
    collapse: p.get("collapse") !== "0",
  };
}

// Only what differs from the defaults: a plain search stays a short, shareable address.
function address(state) {
  const p = new URLSearchParams();
  if (state.like) p.set("like", state.like);
  if (state.photo) p.set("photo", state.photo);
  if (state.q) p.set("q", state.q);
  if (state.type !== "image") p.set("type", state.type);
  if (state.mode !== "vector") p.set("mode", state.mode);
  if (state.minScore !== null) p.set("min_score", state.minScore);
  if (!state.collapse) p.set("collapse", "0");
  const text = p.toString();
  return text ? "?" + text : location.pathname;
}

function go(state) {
  history.pushState(state, "", address(state));
  show(state);
}

// The same search with the controls as they are now, when one is on screen.
function rerun() {
  if (!current || !(current.q || current.like || current.photo)) return;
  const state = { ...current, ...controls() };
  if (address(state) !== address(current)) go(state);
}

// -- searching ----------------------------------------------------------------------------------

// The request's fields: mode and min_score only when set, so a server without them still answers.
function fields(state, type, k) {
  const f = { k: String(k), type };
  if (state.collapse) f.collapse = "true";
  if (state.mode !== "vector") f.mode = state.mode;
  if (state.minScore !== null) f.min_score = state.minScore;
  return f;
}

function request(state, type, k) {
  const f = fields(state, type, k);
  if (state.photo) {
    const data = new FormData();
    data.append("file", chosenImage);
    if (state.q) data.append("text", state.q);
    for (const [key, value] of Object.entries(f)) data.append(key, value);
    return call("/api/search/image", { method: "POST", body: data });
  }
  const p = new URLSearchParams(f);
  if (state.like) p.set("like", state.like);
  else p.set("q", state.q);
  return call("/api/search?" + p);
}

async function show(state) {
  current = state;
  showControls(state);
  showAnchor(state.like);
  if (!state.q && !state.like && !state.photo) return firstScreen();
  if (state.photo && (!chosenImage || chosenImage.name !== state.photo)) {
    results.replaceChildren();
    return setStatus(`Choose ${state.photo} again to search by it: photos are not kept.`, true);
  }
  setStatus("Searching...");
  try {
    // Images and texts are scored on different scales: "both" shows each in its own section.
    const types = state.type === "any" ? ["image", "text"] : [state.type];
    const k = types.length > 1 ? K / 2 : K;
    const bodies = await Promise.all(types.map((type) => request(state, type, k)));
    if (current !== state) return; // a newer search has started meanwhile
    results.replaceChildren(...bodies.map((body, i) => section(types[i], body.results)));
    const found = bodies.reduce((n, b) => n + b.results.length, 0);
    const cut = bodies.reduce((n, b) => n + (b.cut || 0), 0);
    const took = Math.max(...bodies.map((b) => b.took_ms));
    setStatus(`${found} results for ${label(state)}${cut ? `, ${cut} cut` : ""} in ${took} ms`);
  } catch (error) {
    if (current !== state) return;
    if (state.photo && error.status >= 400 && error.status < 500) forgetImage();
    results.replaceChildren();
    setStatus(error.message, true);
  }
}

function label(state) {
  if (state.like) return `item ${state.like}`;
  if (state.photo) return state.q ? `${state.photo} + "${state.q}"` : state.photo;
  return `"${state.q}"`;
}

// -- rendering ----------------------------------------------------------------------------------

function section(type, items, title) {
  const part = el("section", "results");
  const heading = el("h2", "", title || (type === "image" ? "Images" : "Texts"));
  heading.id = "heading-" + type + (title ? "-first" : "");
  part.setAttribute("aria-labelledby", heading.id);
  const grid = el("ul", "grid");
  for (const item of items) grid.append(card(item));
  if (!items.length) grid.append(el("li", "none", "Nothing found."));
  part.append(heading, grid);
  return part;
}

function fileName(item) {
  return (item.source || "").split("/").pop();
}

function describe(item) {
  const m = item.metadata || {};
  return m.caption || m.title || m.description || m.alt || fileName(item) || `item ${item.id}`;
}

function picture(item, sizes = [256, 512]) {
  const img = el("img");
  img.src = `${item.thumbnail}?size=${sizes[0]}`;
  img.srcset = `${item.thumbnail}?size=${sizes[0]} 1x, ${item.thumbnail}?size=${sizes[1]} 2x`;
  img.alt = describe(item);
  img.loading = "lazy";
  return img;
}

function card(item) {
  const li = el("li", "card " + item.modality);
  li.dataset.id = item.id;
  const more = el("a", "more");
  more.href = address({ ...current, q: null, photo: null, like: item.id });
  more.title = "More like this";
  more.append(item.modality === "image" ? picture(item) : el("span", "text", item.text));
  more.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab or window
    event.preventDefault();
    go({ ...current, q: null, photo: null, like: item.id });
  });
  const meta = el("div", "meta");
  const where = fileName(item) + (item.locator ? " · " + item.locator : "");
  meta.append(el("span", "where", where));
  if (item.score !== undefined) meta.append(el("span", "score", item.score.toFixed(3)));
  li.append(more, meta);
  const extras = el("div", "extras");
  if (item.copies && item.copies.length) {
    const n = item.copies.length;
    const badge = el("span", "copies", `+${n} ${n === 1 ? "copy" : "copies"}`);
    badge.title = "Near-identical items: " + item.copies.join(", ");
    extras.append(badge);
  }
  if (item.modality === "image") {
    const original = el("a", "original", "Open original");
    original.href = `/files/${item.id}`;
    original.target = "_blank";
    original.rel = "noopener";
    original.setAttribute("aria-label", `Open original of ${fileName(item)}`);
    extras.append(original);
  }
  if (extras.childElementCount) li.append(extras);
  return li;
}

async function showAnchor(id) {
  anchor.hidden = !id;
  anchor.replaceChildren();
  if (!id) return;
  try {
    const item = await call(`/api/items/${id}`);
    if (current.like !== id) return;
    const what = item.modality === "image" ? picture(item, [128, 256]) : el("q", "", item.text);
    anchor.append(el("span", "", "More like this:"), what);
  } catch (error) {
    anchor.append(el("span", "error", error.message));
  }
}

async function firstScreen() {
  results.replaceChildren();
  try {
    const [health, recent] = await Promise.all([call("/api/health"), call("/api/recent?k=12")]);
    if (current.q || current.like || current.photo) return;
    const { image = 0, text = 0 } = health.items;
    setStatus(
      `${image.toLocaleString()} images and ${text.toLocaleString()} texts indexed. ` +
        "Describe what you look for, or search by a photo; a result finds more like it."
    );
    results.replaceChildren(section("image", recent.items, "Recently added"));
  } catch (error) {
    setStatus(error.message, true);
  }
}

// -- the photo ----------------------------------------------------------------------------------

function isImage(file) {
  return file.type.startsWith("image/") || (file.type === "" && UNTYPED_IMAGES.test(file.name));
}

function forgetImage() {
  chosenImage = null;
  fileInput.value = "";
  preview.hidden = true;
  clearImage.hidden = true;
}

function chooseImage(file) {
  if (!file) return;
  if (!isImage(file)) {
    forgetImage();
    return setStatus(`${file.name} is not an image.`, true);
  }
  chosenImage = file;
  preview.src = URL.createObjectURL(file);
  preview.alt = "The photo searched by: " + file.name;
  preview.hidden = false;
  clearImage.hidden = false;
  go({ ...controls(), q: query.value.trim() || null, like: null, photo: file.name });
}

// -- events -------------------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = query.value.trim();
  if (!text && !chosenImage) return setStatus("Type something to search for.", true);
  const photo = chosenImage ? chosenImage.name : null;
  go({ ...controls(), q: text || null, like: null, photo });
});
for (const control of document.querySelectorAll("#modality input, #mode, #collapse")) {
  control.addEventListener("change", rerun);
}
$("min-score").addEventListener("change", rerun);
$("min-score").addEventListener("keydown", (event) => event.key === "Enter" && rerun());
fileInput.addEventListener("change", () => chooseImage(fileInput.files[0]));
clearImage.addEventListener("click", () => {
  forgetImage();
  const text = query.value.trim();
  go({ ...controls(), q: text || null, like: null, photo: null });
});
drop.addEventListener("click", () => fileInput.click());
drop.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" && event.key !== " ") return;
  event.preventDefault(); // Space would scroll the page
  fileInput.click();
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  chooseImage(event.dataTransfer.files[0]);
});
window.addEventListener("popstate", (event) => show(event.state || fromAddress(location.search)));

if (TOUCH) $("drop-label").textContent = "Choose photo";
drop.classList.toggle("touch", TOUCH);
const initial = fromAddress(location.search);
history.replaceState(initial, "", address(initial));
show(initial);
