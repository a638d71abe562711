// cir-lightning serve: the page's behaviour. Plain JavaScript, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { reference: null, steps: [] }; // reference: {relpath, mark} or {upload: data URL, name}
let searching = false;

function imageUrl(relpath) {
  return "/image/" + relpath.split("/").map(encodeURIComponent).join("/");
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function thumbnail(reference) {
  const img = element("img");
  img.src = reference.relpath ? imageUrl(reference.relpath) : reference.upload;
  img.alt = reference.relpath || reference.name;
  img.loading = "lazy";
  return img;
}

const PLACEHOLDER = "Upload an image, drop one here, or pick one from the index.";

function setReference(reference) {
  state.reference = reference;
  $("reference-placeholder").textContent = PLACEHOLDER;
  $("reference-image").src = reference.relpath ? imageUrl(reference.relpath) : reference.upload;
  $("reference").classList.remove("empty");
  $("reference-path").textContent = reference.relpath || `uploaded: ${reference.name}`;
  $("reference-path").dataset.relpath = reference.relpath || "";
  $("search").disabled = false;
  showReferenceMark();
  markReference();
}

// the reference's mark ("changed since indexed", "gone"), badged on the reference panel as on a tile
function showReferenceMark() {
  const mark = (state.reference && state.reference.mark) || "";
  const panel = $("reference");
  panel.classList.toggle("changed", Boolean(mark) && mark !== "gone");
  panel.classList.toggle("gone", mark === "gone");
  panel.title = mark ? `${mark}\n${MARK_NOTES[mark] || ""}`.trim() : "Drop an image here";
  $("reference-mark").textContent = mark;
  $("reference-mark").hidden = !mark;
}

function markReference() {
  const current = state.reference && state.reference.relpath;
  for (const tile of $("results").children) {
    tile.classList.toggle("is-reference", tile.dataset.relpath === current);
  }
}

// what a mark ("gone", "changed since indexed": as `cir-lightning search` prints it) means, for the tooltip
const MARK_NOTES = {
  gone: "Gone since the index was built: index the folder again",
  "changed since indexed": "Replaced since the index was built: ranked as the photo embedded then, shown as it is now",
};

// a tile of an indexed image (a result, or one in the "Pick from index" grid), badged with its mark; a gone
// file gets a placeholder in place of its image, and the tile's title says what the mark means and `action`
function imageTile(relpath, mark, caption, action) {
  const tile = element("figure", "tile");
  tile.dataset.relpath = relpath;
  const gone = mark === "gone";
  const note = mark ? `\n${MARK_NOTES[mark] || mark}` : "";
  tile.title = `${relpath}${note}` + (gone ? "" : `\n${action}`);
  tile.append(gone ? element("div", "missing", "no file") : thumbnail({ relpath }), caption);
  if (mark) {
    tile.dataset.mark = mark;
    tile.classList.add(gone ? "gone" : "changed");
    tile.append(element("span", "badge", mark));
  }
  return tile;
}

function resultTile(hit) {
  const caption = element("figcaption");
  const line = element("div", "score-line");
  line.append(element("span", "rank", `#${hit.rank}`), element("span", "score", hit.score.toFixed(3)));
  caption.append(line, element("div", "path", hit.relpath));
  const tile = imageTile(hit.relpath, hit.mark, caption, "Click to search from this image");
  tile.dataset.score = String(hit.score);
  if (hit.mark === "gone") return tile; // nothing to show or search from
  tile.tabIndex = 0;
  const choose = () => {
    setReference({ relpath: hit.relpath, mark: hit.mark });
    search();
  };
  tile.addEventListener("click", choose);
  tile.addEventListener("keydown", (event) => {
    if (event.key === "Enter") choose();
  });
  return tile;
}

async function search() {
  if (!state.reference || searching) return;
  const text = $("text").value.trim();
  const k = Number.parseInt($("k").value, 10) || 12;
  const reference = state.reference;
  const body = reference.relpath
    ? { text, k, relpath: reference.relpath }
    : { text, k, upload: reference.upload, name: reference.name };
  searching = true;
  $("search").disabled = true;
  setStatus("Searching…");
  const started = performance.now();
  try {
    const result = await api("/api/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (result.reference && state.reference === reference) { // its mark as of this search
      reference.mark = result.reference.mark;
      showReferenceMark();
    }
    $("results").replaceChildren(...result.hits.map(resultTile));
    $("results").dataset.searches = String(Number($("results").dataset.searches) + 1);
    markReference();
    addStep(reference, text);
    const took = Math.round(performance.now() - started);
    const marked = result.hits.filter((hit) => hit.mark).length;
    const stale = marked ? ` · ${marked} changed or gone since indexed: index the folder again` : "";
    setStatus(`Top ${result.hits.length} for “${text || "(no text)"}” · ${took} ms${stale} · click a result to search from it`);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    searching = false;
    $("search").disabled = false;
  }
}

function addStep(reference, text) {
  const last = state.steps[state.steps.length - 1];
  if (last && last.reference === reference && last.text === text) return;
  state.steps.push({ reference, text });
  state.steps = state.steps.slice(-8);
  const items = state.steps.map((step) => {
    const item = element("li");
    item.title = "Search again from this step";
    item.append(thumbnail(step.reference), element("span", null, step.text || "(no text)"));
    item.addEventListener("click", () => {
      $("text").value = step.text;
      setReference(step.reference);
      search();
    });
    return item;
  });
  $("trail-list").replaceChildren(...items);
  $("trail").hidden = false;
}

function readUpload(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    setReference({ upload: reader.result, name: file.name });
    setStatus(`Uploaded ${file.name}. Describe the change and press Search.`);
    $("text").focus();
  });
  reader.addEventListener("error", () => setStatus(`Cannot read ${file.name}.`, true));
  reader.readAsDataURL(file);
}

let filterTimer = null;
async function loadPicker() {
  try {
    const filter = encodeURIComponent($("filter").value);
    const result = await api(`/api/images?filter=${filter}&limit=48`);
    const marks = result.marks || {};
    const tiles = result.relpaths.map((relpath) => {
      const mark = marks[relpath];
      const tile = imageTile(relpath, mark, element("figcaption", "path", relpath), "Click to search from it");
      if (mark === "gone") return tile; // its file is gone: nothing to search from
      tile.addEventListener("click", () => {
        setReference({ relpath, mark });
        $("picker").hidden = true;
        if (mark) setStatus(`${relpath} was replaced since the index was built: the search starts from it as it is now.`);
        $("text").focus();
      });
      return tile;
    });
    $("picker-grid").replaceChildren(...tiles);
    const marked = Object.keys(marks).length;
    const stale = marked ? ` · ${marked} changed or gone since indexed` : "";
    $("picker-count").textContent = `${result.relpaths.length} of ${result.total} shown${stale}`;
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function start() {
  try {
    const info = await api("/api/info");
    $("index-info").textContent = `${info.count.toLocaleString()} images · ${info.root}`;
    $("k").value = String(info.k);
  } catch (err) {
    $("index-info").textContent = "";
    setStatus(err.message, true);
  }
  $("reference-image").addEventListener("error", () => {
    $("reference").classList.add("empty");
    $("reference-placeholder").textContent = "This file cannot be shown as an image.";
  });
  $("upload").addEventListener("change", (event) => readUpload(event.target.files[0]));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  $("pick-toggle").addEventListener("click", () => {
    $("picker").hidden = !$("picker").hidden;
    if (!$("picker").hidden) loadPicker();
  });
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(loadPicker, 150);
  });
  const drop = $("reference");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    readUpload(event.dataTransfer.files[0]);
  });
}

start();
