"""The search page `mmtool serve` sends: one self-contained HTML file (no external assets, works offline).
__COUNT__ and __K__ are filled in by the server."""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mmtool image search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
  form { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; margin-bottom: 1rem; }
  input[type=search] { flex: 1; min-width: 16rem; font-size: 1.1rem; padding: .4rem .6rem; }
  #status { color: #666; margin-bottom: .8rem; min-height: 1.2em; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .8rem; }
  figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4rem; }
  figure img { width: 100%; aspect-ratio: 1; object-fit: contain; }
  figcaption { font-size: .8rem; overflow-wrap: anywhere; }
  .score { color: #888; }
</style>
</head>
<body>
<h1>Image search</h1>
<form id="text-form">
  <input id="query" type="search" name="q" placeholder="Describe an image, e.g. a red apple" autofocus>
  <button type="submit">Search</button>
  <label>or find images like <input id="upload" type="file" accept="image/*"></label>
</form>
<div id="status">__COUNT__ images indexed</div>
<div id="results"></div>
<script>
const results = document.getElementById("results");
const statusLine = document.getElementById("status");

function show(hits) {
  results.replaceChildren(...hits.map(hit => {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.dataset.sha256 = hit.sha256;
    const img = document.createElement("img");
    img.src = "/thumb/" + hit.sha256 + ".jpg";
    img.alt = hit.caption || hit.path;
    const caption = document.createElement("figcaption");
    caption.textContent = (hit.caption || hit.path) + " ";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(score);
    figure.append(img, caption);
    figure.title = hit.path;
    return figure;
  }));
  statusLine.textContent = hits.length + " results";
}

async function search(request) {
  statusLine.textContent = "searching...";
  const response = await request;
  const body = await response.json();
  if (!response.ok) { statusLine.textContent = "error: " + body.error; results.replaceChildren(); return; }
  show(body);
}

document.getElementById("text-form").addEventListener("submit", event => {
  event.preventDefault();
  const q = document.getElementById("query").value.trim();
  if (q) search(fetch("/api/search?k=__K__&q=" + encodeURIComponent(q)));
});
document.getElementById("upload").addEventListener("change", event => {
  const file = event.target.files[0];
  if (file) search(fetch("/api/search-image?k=__K__", {method: "POST", body: file}));
});
</script>
</body>
</html>
"""
