// The mm15 upload page: images and a video + question -> /v1/chat/completions -> answer, boxes
// drawn on the images. A video is sent as a data URL in a "video_url" part (vLLM's shape); the
// server samples its frames, which are numbered as images after the images.
// Model text is only ever inserted with textContent (never as HTML).
"use strict";

const PALETTE = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#17becf"];
const $ = (id) => document.getElementById(id);
let loaded = [];  // [{dataUrl, img}] in the order they are sent (image k of the answer)
let video = null;  // the attached video's data URL, sent after the images

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("not an image the browser can show"));
    img.src = src;
  });
}

// The server reads the container from the bytes; it only needs a video/* media type.
function asVideoUrl(dataUrl) {
  return dataUrl.startsWith("data:video/") ? dataUrl : dataUrl.replace(/^data:[^;,]*/, "data:video/octet-stream");
}

function showVideo() {
  if (!video) return;
  const el = document.createElement("video");
  el.src = video;
  el.controls = true;
  el.muted = true;
  $("images").appendChild(el);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function errorText(resp) {
  try { return (await resp.json()).error.message; } catch (e) { return `HTTP ${resp.status}`; }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// Images drawn at their own pixel size (CSS scales them), so region pixels map 1:1.
function drawImages(regions) {
  const box = $("images");
  box.replaceChildren();
  loaded.forEach((item, k) => {
    const canvas = document.createElement("canvas");
    canvas.width = item.img.naturalWidth;
    canvas.height = item.img.naturalHeight;
    canvas.dataset.image = String(k);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(item.img, 0, 0);
    const lw = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 200));
    regions.forEach((r, i) => {
      if (r.image !== k) return;
      ctx.strokeStyle = ctx.fillStyle = PALETTE[i % PALETTE.length];
      ctx.lineWidth = lw;
      if (r.box) {
        const [x1, y1, x2, y2] = r.box;
        ctx.strokeRect(x1 + lw / 2, y1 + lw / 2, Math.max(0, x2 - x1 - lw), Math.max(0, y2 - y1 - lw));
        ctx.font = `${Math.max(12, 6 * lw)}px sans-serif`;
        ctx.fillText(String(i), x1 + lw + 2, y1 + Math.max(12, 6 * lw));
      } else if (r.point) {
        ctx.beginPath();
        ctx.arc(r.point[0], r.point[1], 3 * lw, 0, 2 * Math.PI);
        ctx.stroke();
      }
    });
    box.appendChild(canvas);
  });
  showVideo();
  const list = $("regions");
  list.replaceChildren();
  regions.forEach((r, i) => {
    const li = document.createElement("li");
    li.value = i;
    li.style.color = PALETTE[i % PALETTE.length];
    const where = r.box ? `box [${r.box.join(", ")}]` : `point [${r.point.join(", ")}]`;
    li.textContent = `${r.label || "(no label)"} — image ${r.image}, ${where}`;
    list.appendChild(li);
  });
}

async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, cut).trim();
      buf = buf.slice(cut + 2);
      if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.state = "running";
  $("send").disabled = true;
  setStatus("thinking…");
  try {
    const files = Array.from($("files").files);
    const urls = await Promise.all(files.map(readFile));
    loaded = await Promise.all(urls.map(async (u) => ({ dataUrl: u, img: await loadImage(u) })));
    const videoFile = $("video").files[0];
    video = videoFile ? asVideoUrl(await readFile(videoFile)) : null;
    drawImages([]);
    const models = await fetch("/v1/models", { headers: headers() });
    if (!models.ok) throw new Error(await errorText(models));
    const model = (await models.json()).data[0].id;
    const content = loaded.map((it) => ({ type: "image_url", image_url: { url: it.dataUrl } }));
    if (video) content.push({ type: "video_url", video_url: { url: video } });
    content.push({ type: "text", text: $("question").value });
    const stream = $("stream").checked;
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        model, stream, max_tokens: Number($("max-tokens").value) || 128,
        messages: [{ role: "user", content }],
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    let regions = [], reason = null;
    if (stream) {
      for await (const data of sseEvents(resp)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices[0];
        if (!choice) continue;
        if (choice.delta.content) answer.textContent += choice.delta.content;
        if (choice.delta.regions) regions = choice.delta.regions;
        if (choice.finish_reason) reason = choice.finish_reason;
      }
    } else {
      const body = await resp.json();
      answer.textContent = body.choices[0].message.content;
      regions = body.choices[0].message.regions || [];
      reason = body.choices[0].finish_reason;
    }
    drawImages(regions);
    answer.dataset.state = "done";
    setStatus(`done (${reason}), ${regions.length} region(s)`);
  } catch (err) {
    answer.dataset.state = "error";
    setStatus(err.message, true);
  } finally {
    $("send").disabled = false;
  }
}

$("ask").addEventListener("submit", ask);
