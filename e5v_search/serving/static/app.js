// The search page: plain JavaScript against the JSON API, no build step.
"use strict";

const form = document.getElementById("search-form");
const query = document.getElementById("q");
const fileInput = document.getElementById("file");
const drop = document.getElementById("drop");
const preview = document.getElementById("preview");
const clearImage = document.getElementById("clear-image");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
let chosenImage = null;

function modality() {
  return document.querySelector('input[name="type"]:checked').value;
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

function render(body, label) {
  results.replaceChildren();
  for (const r of body.results) {
    const card = document.createElement("article");
    card.className = "card " + r.modality;
    card.dataset.id = r.id;
    card.title = "More like this";
    if (r.modality === "image") {
      const img = document.createElement("img");
      img.src = r.thumbnail;
      img.alt = r.source.split("/").pop();
      img.loading = "lazy";
      card.append(img);
    } else {
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = r.text;
      card.append(text);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = (r.source || "").split("/").pop() + (r.locator ? " · " + r.locator : "");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    meta.append(where, score);
    card.append(meta);
    card.addEventListener("click", () => searchLike(r.id));
    results.append(card);
  }
  setStatus(`${body.results.length} results for ${label} in ${body.took_ms} ms`);
}

function params(extra) {
  const p = new URLSearchParams(extra);
  if (modality()) p.set("type", modality());
  return p;
}

async function searchText() {
  const text = query.value.trim();
  if (!text) return setStatus("Type something to search for.", true);
  setStatus("Searching...");
  try {
    render(await call("/api/search?" + params({ q: text, k: 24 })), `"${text}"`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function searchImage() {
  const data = new FormData();
  data.append("file", chosenImage);
  data.append("k", "24");
  const text = query.value.trim();
  if (text) data.append("text", text);
  if (modality()) data.append("type", modality());
  setStatus("Searching...");
  try {
    const label = text ? `${chosenImage.name} + "${text}"` : chosenImage.name;
    render(await call("/api/search/image", { method: "POST", body: data }), label);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function searchLike(id) {
  setStatus("Searching...");
  try {
    render(await call("/api/search?" + params({ like: id, k: 24 })), `item ${id}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function chooseImage(file) {
  if (!file || !file.type.startsWith("image/")) return setStatus("That is not an image.", true);
  chosenImage = file;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  clearImage.hidden = false;
  searchImage();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  chosenImage ? searchImage() : searchText();
});
fileInput.addEventListener("change", () => chooseImage(fileInput.files[0]));
clearImage.addEventListener("click", () => {
  chosenImage = null;
  fileInput.value = "";
  preview.hidden = true;
  clearImage.hidden = true;
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  chooseImage(event.dataTransfer.files[0]);
});
