// cropdoc's offline web app: what `cropdoc predict --runtime onnx` does, in the browser.
// The preprocessing is onnx_runtime.py's (whole-factor average pooling, then bilinear
// sampling at the output pixel centres through the squish, crop or pad mapping, reflected
// borders), the verdicts are predictions.py's and the quality checks quality/checks.py's.
import * as ort from "./ort/ort.webgpu.min.mjs";

const $ = (id) => document.getElementById(id);
const state = { app: null, session: null, backend: "", keeps: false };

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// -- the model's input ---------------------------------------------------------------------

function averagePool(x, h, w, k) {
  // k x k means of an (h, w, 3) Float32Array; the last, partial windows average what they hold
  const ph = Math.ceil(h / k), pw = Math.ceil(w / k);
  const out = new Float32Array(ph * pw * 3);
  for (let i = 0; i < ph; i++) {
    for (let j = 0; j < pw; j++) {
      let r = 0, g = 0, b = 0, n = 0;
      for (let y = i * k; y < Math.min(h, (i + 1) * k); y++) {
        for (let x0 = j * k; x0 < Math.min(w, (j + 1) * k); x0++) {
          const o = (y * w + x0) * 3;
          r += x[o]; g += x[o + 1]; b += x[o + 2]; n++;
        }
      }
      const o = (i * pw + j) * 3;
      out[o] = r / n; out[o + 1] = g / n; out[o + 2] = b / n;
    }
  }
  return [out, ph, pw];
}

function fractions(app, h, w, u, axis) {
  // where item-box fractions u fall in the source, as fractions (0..1), along x or y
  if (app.resize === "squish") return u;
  const [itemH, itemW] = app.item_size;
  const itemAspect = itemW / itemH, sourceAspect = w / h, wider = sourceAspect > itemAspect;
  if (app.resize === "crop") {
    const share = axis === "x" ? (wider ? itemAspect / sourceAspect : 1) : (wider ? 1 : sourceAspect / itemAspect);
    return u.map((v) => 0.5 * (1 - share) + v * share);
  }
  const scale = axis === "x" ? (wider ? 1 : itemAspect / sourceAspect) : (wider ? sourceAspect / itemAspect : 1);
  return u.map((v) => (v - 0.5) * scale + 0.5);
}

function reflect(c, n) {
  // reflect at the pixel edges -0.5 and n - 0.5 (grid_sample, align_corners=False)
  const shifted = Math.abs(c + 0.5);
  const flips = Math.floor(shifted / n), extra = shifted % n;
  return flips % 2 === 0 ? extra - 0.5 : n - extra - 0.5;
}

function taps(coords, n, zeros) {
  // for each coordinate: two indices and their weights (0 outside with zero padding)
  return coords.map((c0) => {
    let c = c0;
    if (!zeros) c = Math.min(Math.max(reflect(c, n), 0), n - 1);
    const low = Math.floor(c), frac = Math.fround(c - low);
    const weight = (i, v) => (i >= 0 && i < n ? v : 0);
    const clip = (i) => Math.min(Math.max(i, 0), n - 1);
    return [clip(low), weight(low, Math.fround(1 - frac)), clip(low + 1), weight(low + 1, frac)];
  });
}

export function preprocess(app, pixels, h, w) {
  // (h, w, 3) uint8 RGB -> the (1, 3, outH, outW) Float32Array the model takes
  const [outH, outW] = app.size;
  let x = Float32Array.from(pixels), height = h, width = w;
  const k = Math.floor(Math.min(h / outH, w / outW));
  let fh = h, fw = w;
  if (k >= 2) {
    [x, height, width] = averagePool(x, h, w, k);
    fh = h / k; fw = w / k;
  }
  const ux = Array.from({ length: outW }, (_, i) => (i + 0.5) / outW);
  const uy = Array.from({ length: outH }, (_, i) => (i + 0.5) / outH);
  const zeros = app.resize === "pad";
  const ys = taps(fractions(app, fh, fw, uy, "y").map((v) => v * fh - 0.5), height, zeros);
  const xs = taps(fractions(app, fh, fw, ux, "x").map((v) => v * fw - 0.5), width, zeros);
  const rows = new Float32Array(outH * width * 3);  // along y first, as numpy does
  for (let i = 0; i < outH; i++) {
    const [a, wa, b, wb] = ys[i];
    for (let j = 0; j < width * 3; j++) {
      rows[i * width * 3 + j] = Math.fround(x[a * width * 3 + j] * wa) + Math.fround(x[b * width * 3 + j] * wb);
    }
  }
  const input = new Float32Array(3 * outH * outW);
  for (let i = 0; i < outH; i++) {
    for (let j = 0; j < outW; j++) {
      const [a, wa, b, wb] = xs[j];
      for (let c = 0; c < 3; c++) {
        const v = Math.fround(rows[(i * width + a) * 3 + c] * wa) + Math.fround(rows[(i * width + b) * 3 + c] * wb);
        input[c * outH * outW + i * outW + j] = (v / 255 - app.mean[c]) / app.std[c];
      }
    }
  }
  return input;
}

// -- answers -------------------------------------------------------------------------------

export function softmax(logits, temperature) {
  const scaled = Array.from(logits, (v) => v / temperature);
  const top = Math.max(...scaled);
  const e = scaled.map((v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

export function verdict(app, probs, ood, problem) {
  if (problem) return "retake";
  if (ood > 1.0) return "out_of_scope";
  if (Math.max(...probs) < app.min_confidence) return "uncertain";
  return "diagnosis";
}

// -- photo quality (quality/checks.py) -------------------------------------------------------

function workCopy(values, h, w, channels) {
  const k = Math.max(1, Math.floor(Math.max(h, w) / state.app.quality.work_side + 0.5));
  if (k === 1) return [values, h, w];
  const oh = Math.floor(h / k), ow = Math.floor(w / k);
  const out = new Float32Array(oh * ow * channels);
  for (let i = 0; i < oh; i++) for (let j = 0; j < ow; j++) for (let c = 0; c < channels; c++) {
    let s = 0;
    for (let y = 0; y < k; y++) for (let x = 0; x < k; x++) s += values[((i * k + y) * w + j * k + x) * channels + c];
    out[(i * ow + j) * channels + c] = s / (k * k);
  }
  return [out, oh, ow];
}

export function measure(pixels, h, w, original) {
  const n = h * w;
  const luma0 = new Float32Array(n);
  for (let i = 0; i < n; i++) luma0[i] = 0.299 * pixels[3 * i] + 0.587 * pixels[3 * i + 1] + 0.114 * pixels[3 * i + 2];
  const [luma, lh, lw] = workCopy(luma0, h, w, 1);
  let sum = 0, sq = 0, count = 0, dark = 0, bright = 0, total = 0;
  for (let i = 0; i < lh * lw; i++) { total += luma[i]; dark += luma[i] < 25; bright += luma[i] > 245; }
  for (let i = 1; i < lh - 1; i++) for (let j = 1; j < lw - 1; j++) {
    const c = i * lw + j;
    const v = luma[c - lw] + luma[c + lw] + luma[c - 1] + luma[c + 1] - 4 * luma[c];
    sum += v; sq += v * v; count++;
  }
  const mean = count ? sum / count : 0;
  const [rgb, rh, rw] = workCopy(Float32Array.from(pixels), h, w, 3);
  let plant = 0, plantLuma = 0;
  for (let i = 0; i < rh * rw; i++) {
    const r = rgb[3 * i] / 255, g = rgb[3 * i + 1] / 255, b = rgb[3 * i + 2] / 255;
    const high = Math.max(r, g, b), spread = high - Math.min(r, g, b);
    const saturation = high > 0 ? spread / Math.max(high, 1e-6) : 0;
    const safe = Math.max(spread, 1e-6);
    let hue = high === r ? (((g - b) / safe) % 6 + 6) % 6 : high === g ? (b - r) / safe + 2 : (r - g) / safe + 4;
    hue *= 60;
    if (hue >= 15 && hue <= 170 && saturation >= 0.12 && high >= 0.12) { plant++; plantLuma += luma[i]; }
  }
  return {
    side: Math.min(...original),
    long_side: Math.max(...original),
    sharpness: count ? sq / count - mean * mean : 0,
    mean: total / (lh * lw),
    dark_share: dark / (lh * lw),
    bright_share: bright / (lh * lw),
    plant_share: plant / (rh * rw),
    plant_luma: plant ? plantLuma / plant : 0,
  };
}

export function judge(m, t) {
  if (m.long_side < t.min_long_side || m.side < t.min_side) return "too_small";
  if (m.dark_share > t.dark_share || m.mean < t.dark_mean) return "too_dark";
  const leafless = m.plant_share < t.plant_share;
  // too little plant to judge by: clipped white all over; else the leaf itself washed out
  if (leafless ? m.bright_share > t.bright_share : m.plant_luma > t.plant_bright) return "overexposed";
  if (leafless) return "not_a_leaf";
  if (m.sharpness < t.sharpness) return "blurred";
  return "";
}

// -- several photos of one plant (inference/fusion.py) ------------------------------------------

export function combine(rows) {
  // the mean of the photos' probabilities (fusion.py's default)
  return rows[0].map((_, c) => rows.reduce((s, r) => s + r[c], 0) / rows.length);
}

export function fuse(app, answers, names) {
  const keep = answers.map((a, i) => i).filter((i) => !answers[i].quality && answers[i].ood_score <= 1.0);
  const leftOut = answers.map((a, i) => i).filter((i) => !keep.includes(i)).map((i) => ({
    photo: names[i],
    why: answers[i].quality ? `retake: ${app.quality.advice[answers[i].quality]}` : "out of scope",
  }));
  const used = keep.length ? keep : answers.map((a, i) => i);
  const probs = combine(used.map((i) => answers[i].probs));
  const ood = used.reduce((s, i) => s + answers[i].ood_score, 0) / used.length;
  let given;
  if (!keep.length) given = answers.some((a) => a.quality) ? "retake" : "out_of_scope";
  else given = Math.max(...probs) < app.min_confidence ? "uncertain" : "diagnosis";
  const advice = keep.length || !leftOut.some((x) => x.why !== "out of scope")
    ? app.advice[given]
    : leftOut.find((x) => x.why !== "out of scope").why.replace("retake: ", "");
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  return {
    verdict: given, advice, quality: "", confidence: Math.max(...probs), ood_score: ood, probs,
    top: order.map(([p, i]) => ({ label: app.classes[i], prob: p })),
    used: keep.map((i) => names[i]), left_out: leftOut, photos: answers, backend: state.backend,
  };
}

// -- one photo -------------------------------------------------------------------------------

// Shrinking as Pillow's resize(size, BOX) does it (what images.py decodes with), not as the
// browser's canvas does, which changes from one browser version to the next: the same taps
// (source pixels whose centres fall in the output pixel's box), weights in 22-bit fixed point,
// a horizontal pass into 8-bit pixels, then a vertical one.
const PRECISION_BITS = 22;

function boxTaps(inSize, outSize) {
  // for each output pixel: its first source pixel and the fixed-point weights of its taps
  const scale = inSize / outSize, support = 0.5 * Math.max(scale, 1), inverse = 1 / Math.max(scale, 1);
  const taps = [];
  for (let i = 0; i < outSize; i++) {
    const centre = (i + 0.5) * scale;
    const first = Math.max(Math.trunc(centre - support + 0.5), 0);
    const count = Math.min(Math.trunc(centre + support + 0.5), inSize) - first;
    const raw = [];
    let sum = 0;
    for (let x = 0; x < count; x++) {
      const t = (x + first - centre + 0.5) * inverse;
      const weight = t > -0.5 && t <= 0.5 ? 1 : 0;
      raw.push(weight);
      sum += weight;
    }
    taps.push({ first, weights: raw.map((v) => Math.trunc(0.5 + (sum ? v / sum : 0) * 2 ** PRECISION_BITS)) });
  }
  return taps;
}

function pass(src, lines, inLength, taps, along) {
  // one resampling pass over 8-bit RGB: along rows ("x") or columns ("y"); lines = the other side
  const outLength = taps.length;
  const out = new Uint8Array(lines * outLength * 3);
  const at = along === "x" ? (line, i) => (line * inLength + i) * 3 : (line, i) => (i * lines + line) * 3;
  const to = along === "x" ? (line, i) => (line * outLength + i) * 3 : (line, i) => (i * lines + line) * 3;
  for (let line = 0; line < lines; line++) {
    for (let i = 0; i < outLength; i++) {
      const { first, weights } = taps[i];
      for (let c = 0; c < 3; c++) {
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let k = 0; k < weights.length; k++) sum += src[at(line, first + k) + c] * weights[k];
        out[to(line, i) + c] = Math.min(255, Math.max(0, Math.floor(sum / 2 ** PRECISION_BITS)));
      }
    }
  }
  return out;
}

function shrink(rgb, h, w, outH, outW) {
  const wide = outW === w ? rgb : pass(rgb, h, w, boxTaps(w, outW), "x");
  return outH === h ? wide : pass(wide, outW, h, boxTaps(h, outH), "y");
}

function roundHalfEven(x) {
  // Python's round(), which images.py sizes the shrunk photo with
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

async function decode(blob) {
  // upright RGB pixels, the longer side at most cache_size (never enlarged), and the size as taken
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const original = [bitmap.width, bitmap.height];
  const [width, height] = original;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);  // at its own size: no browser resampling
  const rgba = context.getImageData(0, 0, width, height).data;
  let rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) { rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2]; }
  const limit = state.app.cache_size || Math.max(...original);
  const scale = limit / Math.max(...original);
  if (scale >= 1) return { rgb, h: height, w: width, original };
  const w = Math.max(1, roundHalfEven(width * scale)), h = Math.max(1, roundHalfEven(height * scale));
  rgb = shrink(rgb, height, width, h, w);
  return { rgb, h, w, original };
}

export async function diagnose(blob) {
  const app = state.app;
  const { rgb, h, w, original } = await decode(blob);
  const measures = measure(rgb, h, w, original);
  const problem = judge(measures, app.quality.thresholds);
  const input = new ort.Tensor("float32", preprocess(app, rgb, h, w), [1, 3, ...app.size]);
  const outputs = await state.session.run({ input });
  const probs = softmax(outputs.logits.data, app.temperature);
  const ood = outputs.ood_score ? Number(outputs.ood_score.data[0]) : 0;
  const given = verdict(app, probs, ood, problem);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  return {
    verdict: given,
    advice: given === "retake" ? app.quality.advice[problem] : app.advice[given],
    quality: problem,
    confidence: Math.max(...probs),
    ood_score: ood,
    probs,
    top: order.map(([p, i]) => ({ label: app.classes[i], prob: p })),
    backend: state.backend,
    measures,
  };
}

// -- photos kept for the server ----------------------------------------------------------
// Served by `cropdoc serve MODEL --keep-uploads QUEUE` (and only then: its /model says so),
// the app keeps on this device the photos it answered uncertain or out of scope, at most
// MAX_KEPT of them, and sends each to the server's /predict once the network is back: the
// server answers it again and keeps it by its own answer. A static host never gets any.
const KEPT_VERDICTS = ["uncertain", "out_of_scope"];
const MAX_KEPT = 50;

function keptStore(mode, work) {
  return new Promise((resolve, reject) => {
    const opened = indexedDB.open("cropdoc-kept", 1);
    opened.onupgradeneeded = () => opened.result.createObjectStore("photos", { autoIncrement: true });
    opened.onerror = () => reject(opened.error);
    opened.onsuccess = () => {
      const tx = opened.result.transaction("photos", mode);
      const result = work(tx.objectStore("photos"));
      tx.oncomplete = () => { opened.result.close(); resolve(result.result); };
      tx.onerror = () => reject(tx.error);
    };
  });
}

export async function pending() {
  return keptStore("readonly", (store) => store.count());
}

async function keepForServer(blob, answer) {
  if (!state.keeps || !KEPT_VERDICTS.includes(answer.verdict)) return false;
  if ((await pending()) >= MAX_KEPT) return false;
  await keptStore("readwrite", (store) => store.add({ blob, type: blob.type, verdict: answer.verdict }));
  return true;
}

export async function sendKept() {
  // each kept photo to the server, oldest first; one the server refuses as a bad photo (4xx)
  // is given up, one that finds it unreachable or busy waits for the next time
  if (!state.keeps || !navigator.onLine) return 0;
  const keys = await keptStore("readonly", (store) => store.getAllKeys());
  let sent = 0;
  for (const key of keys) {
    const kept = await keptStore("readonly", (store) => store.get(key));
    let response;
    try {
      response = await fetch(new URL("../predict", location.href), {
        method: "POST", body: kept.blob, headers: { "Content-Type": kept.type || "application/octet-stream" },
      });
    } catch (err) {
      break;  // offline again
    }
    if (response.status >= 500 || response.status === 408 || response.status === 429) break;
    await keptStore("readwrite", (store) => store.delete(key));
    sent += response.ok ? 1 : 0;
  }
  return sent;
}

async function serverKeeps() {
  // whether the server this app came from keeps photos (remembered for offline starts)
  try {
    const response = await fetch(new URL("../model", location.href), { cache: "no-store" });
    const keeps = response.ok && (await response.json()).keeps_uploads === true;
    localStorage.setItem("cropdoc-keeps", keeps ? "1" : "0");
    return keeps;
  } catch (err) {
    return localStorage.getItem("cropdoc-keeps") === "1";
  }
}

function show(result, blob) {
  $("photo").src = URL.createObjectURL(blob);
  const together = result.used ? ` · one answer from ${result.used.length} of ${result.photos.length} photos` : "";
  const label = result.top[0].label.replaceAll("_", " ");
  $("diagnosis").textContent = result.verdict === "diagnosis" ? `${label} (${(100 * result.confidence).toFixed(0)}%)` : result.advice;
  $("diagnosis").dataset.verdict = result.verdict;
  $("bars").innerHTML = "";
  for (const t of result.top) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = `<div class="name"><span></span><span>${(100 * t.prob).toFixed(1)}%</span></div><div class="track"><div class="fill"></div></div>`;
    bar.querySelector(".name span").textContent = t.label.replaceAll("_", " ");
    bar.querySelector(".fill").style.width = `${100 * t.prob}%`;
    $("bars").appendChild(bar);
  }
  $("result").style.display = "block";
  const left = result.left_out && result.left_out.length ? `; left out: ${result.left_out.map((x) => `${x.photo} (${x.why})`).join(", ")}` : "";
  status(`diagnosed on this device (${result.backend})${together}${left}`);
}

async function onFile(event) {
  const files = Array.from(event.target.files);
  if (!files.length) return;
  status("diagnosing…");
  try {
    const answers = [];
    for (const file of files) answers.push(await diagnose(file));
    const result = files.length === 1 ? answers[0] : fuse(state.app, answers, files.map((f) => f.name));
    let kept = 0;
    for (const [n, file] of files.entries()) kept += (await keepForServer(file, answers[n]).catch(() => false)) ? 1 : 0;
    window.cropdocLast = result;
    show(result, files[0]);
    if (kept) status(`${$("status").textContent}; kept on this device for the server (${await pending()} waiting)`);
    if (kept && navigator.onLine) await sendKept().catch(() => 0);
  } catch (err) {
    status(`this photo could not be read: ${err.message || err}`, true);
  }
}

async function start() {
  state.app = await (await fetch("app.json")).json();
  ort.env.wasm.wasmPaths = new URL("./ort/", location.href).href;
  ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain host lacks
  const model = await (await fetch("model.onnx")).arrayBuffer();
  const providers = "gpu" in navigator ? ["webgpu", "wasm"] : ["wasm"];
  let failure = null;
  for (const provider of providers) {
    try {
      state.session = await ort.InferenceSession.create(model, { executionProviders: [provider] });
      state.backend = provider === "webgpu" ? "WebGPU" : "WebAssembly";
      break;
    } catch (err) {
      failure = err;
    }
  }
  if (!state.session) throw failure;
  const app = state.app;
  $("model").textContent = `${app.arch} · ${app.classes.length} classes · input ${app.size.join("x")} · runs on ${state.backend}`;
  $("file").addEventListener("change", onFile);
  $("camera").addEventListener("change", onFile);
  $("pick").addEventListener("click", (e) => { e.preventDefault(); $("file").click(); });
  $("shoot").addEventListener("click", (e) => { e.preventDefault(); $("camera").click(); });
  if ("serviceWorker" in navigator) await navigator.serviceWorker.register("sw.js");
  state.keeps = await serverKeeps();
  window.addEventListener("online", () => sendKept().catch(() => 0));
  window.cropdoc = { diagnose, backend: state.backend, pending, sendKept };
  document.body.dataset.ready = "1";
  if (state.keeps) await sendKept().catch(() => 0);
}

start().catch((err) => status(`the model could not start: ${err.message || err}`, true));
