/* Live figures of the book: the chapters' trained models (ONNX graphs written by vqlib/book/live.py)
 * run in the reader's browser with ONNX Runtime Web (vendored into _static/live/ort/ by
 * book/_ext/vqlib_live.py). One module for every figure, no framework.
 *
 * A figure is <div class="vq-live" data-widget="..."> holding a still <img>, a note, and a
 * <script type="application/json"> with its models (base64 ONNX) and data. This script builds the
 * controls, runs the models and draws the pixels; without WebAssembly the still stays and the note
 * says why. Each figure keeps its state in figure.vqlive (codes drawn, timings in ms), which the
 * browser test (tests/browser/test_live.py) reads back.
 */
(function () {
  "use strict";
  const here = document.currentScript.src.replace(/[^/]*$/, "");  // .../_static/live/

  // ------------------------------------------------------------------ loading the runtime and models

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error("could not load " + src));
      document.head.appendChild(s);
    });
  }

  // base64 (optionally of gzip) -> bytes; the browser decodes a data: URL natively (also on file://),
  // several times faster than a loop over atob's characters
  async function unpack(b64, gzipped) {
    const response = await fetch("data:application/octet-stream;base64," + b64);
    if (!gzipped) return new Uint8Array(await response.arrayBuffer());
    return new Uint8Array(await new Response(response.body.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
  }

  // The runtime's WebAssembly and its loader come packed in a classic script (ort-pack.js), because
  // a page opened from file:// may not fetch() files or import modules beside it.
  let runtime = null, runtimeLoaded = null;
  function ortRuntime() {
    runtime = runtime || (async () => {
      // a page with a figure lists both scripts in its head (book/_ext/vqlib_live.py), so that they
      // download while the page is parsed; loaded here only where a page did not
      if (!window.ort) await loadScript(here + "ort/ort.wasm.min.js");
      if (!window.VQLIVE_ORT_PACK) await loadScript(here + "ort/ort-pack.js");
      const pack = window.VQLIVE_ORT_PACK;
      ort.env.wasm.numThreads = 1;
      ort.env.wasm.wasmBinary = await unpack(pack.wasm, true);
      ort.env.wasm.wasmPaths = {mjs: URL.createObjectURL(new Blob([pack.loader], {type: "text/javascript"}))};
      runtimeLoaded = performance.now();
      return ort;
    })();
    return runtime;
  }

  // One WebAssembly runtime serves every figure of the page, one call at a time: calls of several
  // sessions must not interleave, so each waits for the one before it.
  let queue = Promise.resolve();
  function exclusive(work) {
    const done = queue.then(work);
    queue = done.catch(() => {});
    return done;
  }

  async function session(b64) {
    const o = await ortRuntime();
    const bytes = await unpack(b64, false);
    return exclusive(() => o.InferenceSession.create(bytes, {executionProviders: ["wasm"]}));
  }

  const int64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), dims);
  const float32 = (values, dims) => new ort.Tensor("float32", values, dims);

  // run a session, timing it into list (ms)
  async function timed(sess, feeds, list) {
    return exclusive(async () => {
      const t0 = performance.now();
      const out = await sess.run(feeds);
      list.push(performance.now() - t0);
      return out;
    });
  }

  // ------------------------------------------------------------------ drawing

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  // a canvas of h x w pixels shown `scale` times larger, with an overlay canvas for grids and marks
  function screen(h, w, scale) {
    const pixels = el("canvas", {class: "vq-live-pixels", width: w, height: h});
    const overlay = el("canvas", {class: "vq-live-overlay", width: w * scale, height: h * scale});
    const box = el("div", {class: "vq-live-screen", style: `width:${w * scale}px;height:${h * scale}px`}, pixels, overlay);
    return {box, pixels, overlay, h, w, scale};
  }

  // gray values in [0, 1] (clipped), h x w from data[offset], into the canvas
  function draw(canvas, data, offset, h, w) {
    const image = new ImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      const v = Math.round(Math.min(1, Math.max(0, data[offset + i])) * 255);
      image.data.set([v, v, v, 255], 4 * i);
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
  }

  // grid lines of a rows x cols code map over the screen; cells in `marked` are shaded, `chosen` outlined
  function grid(scr, rows, cols, marked, chosen) {
    const c = scr.overlay.getContext("2d"), W = scr.overlay.width, H = scr.overlay.height;
    c.clearRect(0, 0, W, H);
    const cw = W / cols, ch = H / rows;
    c.fillStyle = "rgba(230, 120, 20, 0.45)";
    for (const i of marked || []) c.fillRect((i % cols) * cw, Math.floor(i / cols) * ch, cw, ch);
    c.strokeStyle = "rgba(120, 160, 255, 0.35)";
    c.lineWidth = 1;
    for (let r = 1; r < rows; r++) { c.beginPath(); c.moveTo(0, r * ch); c.lineTo(W, r * ch); c.stroke(); }
    for (let k = 1; k < cols; k++) { c.beginPath(); c.moveTo(k * cw, 0); c.lineTo(k * cw, H); c.stroke(); }
    if (chosen != null) {
      c.strokeStyle = "rgb(255, 60, 60)";
      c.lineWidth = 3;
      c.strokeRect((chosen % cols) * cw + 1.5, Math.floor(chosen / cols) * ch + 1.5, cw - 3, ch - 3);
    }
  }

  // the code-map cell under a click on the screen
  function cellAt(scr, event, rows, cols) {
    const r = scr.overlay.getBoundingClientRect();
    const row = Math.min(rows - 1, Math.floor((event.clientY - r.top) / r.height * rows));
    const col = Math.min(cols - 1, Math.floor((event.clientX - r.left) / r.width * cols));
    return row * cols + col;
  }

  function slider(label, min, max, step, value, oninput) {
    const input = el("input", {type: "range", min, max, step, value});
    const shown = el("span", {class: "vq-live-value"}, String(value));
    input.addEventListener("input", () => { shown.textContent = input.value; oninput && oninput(Number(input.value)); });
    return {input, box: el("label", {}, label + " ", input, " ", shown)};
  }

  function select(label, options, onchange) {
    const s = el("select", {});
    options.forEach(([value, text]) => s.append(el("option", {value}, text)));
    s.addEventListener("change", () => onchange && onchange(s.value));
    return {input: s, box: el("label", {}, label + " ", s)};
  }

  const pause = () => new Promise((resolve) => setTimeout(resolve, 15));
  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[s.length >> 1] : NaN; };

  // ------------------------------------------------------------------ sampling

  // a draw from softmax(logits / temperature); temperature 0: the most likely code
  function draw_code(logits, temperature) {
    let best = 0;
    for (let k = 1; k < logits.length; k++) if (logits[k] > logits[best]) best = k;
    if (temperature <= 0) return best;
    let total = 0;
    const p = new Float64Array(logits.length);
    for (let k = 0; k < logits.length; k++) total += (p[k] = Math.exp((logits[k] - logits[best]) / temperature));
    let u = Math.random() * total;
    for (let k = 0; k < logits.length; k++) if ((u -= p[k]) <= 0) return k;
    return best;
  }

  function log_softmax_at(logits, k) {
    let m = -Infinity;
    for (const v of logits) m = Math.max(m, v);
    let s = 0;
    for (const v of logits) s += Math.exp(v - m);
    return logits[k] - m - Math.log(s);
  }

  // the GPT's codes, one step at a time with its key/value cache; onstep(tokens so far) after each
  async function gpt_sample(sess, data, label, temperature, length, state, onstep) {
    const size = data.cache_shape.reduce((a, b) => a * b, 1);
    let keys = float32(new Float32Array(size), data.cache_shape), values = float32(new Float32Array(size), data.cache_shape);
    const tokens = [];
    state.logits = [];
    for (let t = 0; t < length; t++) {
      const out = await timed(sess, {token: int64([t ? tokens[t - 1] : 0], [1]), position: int64([t], []),
                                     label: int64([label], [1]), keys, values}, state.timings.step);
      keys = out.keys_out;
      values = out.values_out;
      const logits = out.logits.data;
      state.logits.push(Array.from(logits));
      tokens.push(draw_code(logits, temperature));
      if (onstep) await onstep(tokens);
    }
    return tokens;
  }

  // MaskGIT's iterative decoding (MaskGIT.decode in vqlib/priors/maskgit.py): every masked position is
  // drawn at once, the least confident (log-probability plus annealed Gumbel noise) are masked again
  async function maskgit_decode(sess, data, label, steps, temperature, tau, state) {
    const [h, w] = data.shape, L = h * w, M = data.mask_id, counts = data.counts[String(steps)];
    let tokens = new Array(L).fill(M);
    const states = [tokens.slice()];
    for (let t = 0; t < counts.length; t++) {
      const out = await timed(sess, {tokens: int64(tokens, [1, L]), label: int64([label], [1])}, state.timings.maskgit);
      const logits = out.logits.data, K = logits.length / L;
      const sampled = tokens.slice(), confidence = new Float64Array(L).fill(Infinity);
      for (let i = 0; i < L; i++) {
        if (tokens[i] !== M) continue;
        const row = logits.subarray(i * K, (i + 1) * K);
        sampled[i] = draw_code(row, temperature);
        const gumbel = -Math.log(-Math.log(Math.random() || 1e-12));
        confidence[i] = log_softmax_at(row, sampled[i]) + tau * (1 - (t + 1) / counts.length) * gumbel;
      }
      const order = [...Array(L).keys()].sort((a, b) => confidence[a] - confidence[b]);
      tokens = sampled;
      for (const i of order.slice(0, counts[t])) tokens[i] = M;
      states.push(tokens.slice());
    }
    return states;
  }

  // ------------------------------------------------------------------ the figures

  const widgets = {};

  // Chapter 2: click a cell of the code map, pick a code from the palette; the image is decoded again
  widgets["code-editor"] = async function (fig, data, state) {
    const decoder = await session(data.models.decoder);
    const rows = data.codes.length, cols = data.codes[0].length;
    const codes = data.codes.flat();
    state.codes = codes;
    state.chosen = Math.floor(codes.length / 2);
    let scr = null;
    const info = el("p", {class: "vq-live-info"});
    async function decode() {
      const out = await timed(decoder, {codes: int64(codes, [1, rows, cols])}, state.timings.decode);
      const [, , H, W] = out.pixels.dims;
      scr = scr || screen(H, W, 8);
      draw(scr.pixels, out.pixels.data, 0, H, W);
      grid(scr, rows, cols, [], state.chosen);
      state.decodes += 1;
      info.textContent = `cell (${Math.floor(state.chosen / cols)}, ${state.chosen % cols}) holds code ` +
        `${codes[state.chosen]}; decoded in ${state.timings.decode.at(-1).toFixed(1)} ms`;
    }
    await decode();
    scr.overlay.addEventListener("click", (e) => { state.chosen = cellAt(scr, e, rows, cols); decode(); });
    const palette = el("div", {class: "vq-live-palette"});
    data.palette.forEach((code, i) => palette.append(el("button", {
      type: "button", title: "code " + code, "data-code": code,
      onclick: () => { codes[state.chosen] = code; decode(); }},
      el("img", {src: "data:image/png;base64," + data.tiles[i], alt: "code " + code}))));
    const reset = el("button", {type: "button", onclick: () => { codes.splice(0, codes.length, ...data.codes.flat()); decode(); }}, "reset");
    return [el("div", {class: "vq-live-row"}, scr.box, el("div", {}, el("p", {}, "Palette: frequently used codes that draw differently, each shown as a map made of that code alone."), palette, reset)), info];
  };

  // Chapter 3: pick a class and a temperature; the GPT draws the codes one by one and the digit fills in
  widgets["digit-sampler"] = async function (fig, data, state) {
    const [step, decoder] = await Promise.all([session(data.models.step), session(data.models.decoder)]);
    const [h, w] = data.shape, L = h * w;
    const cls = select("class", data.labels.map((name, i) => [i, name]));
    const temp = slider("temperature", 0, 1.5, 0.05, data.temperature);
    const info = el("p", {class: "vq-live-info"}, "Press sample.");
    let scr = null;
    async function show(tokens) {
      const full = Array.from({length: L}, (_, i) => (i < tokens.length ? tokens[i] : data.background));
      const out = await timed(decoder, {codes: int64(full, [1, h, w])}, state.timings.decode);
      const [, , H, W] = out.pixels.dims;
      scr = scr || screen(H, W, 8);
      draw(scr.pixels, out.pixels.data, 0, H, W);
      grid(scr, h, w, [...Array(L - tokens.length).keys()].map((i) => i + tokens.length));
      state.tokens = tokens.slice();
      info.textContent = `${tokens.length} of ${L} codes drawn; a GPT step took ${(state.timings.step.at(-1) || 0).toFixed(1)} ms, ` +
        `a decode ${state.timings.decode.at(-1).toFixed(1)} ms`;
    }
    await show([]);
    const button = el("button", {type: "button", onclick: async () => {
      button.disabled = true;
      try {
        state.label = Number(cls.input.value);
        await gpt_sample(step, data, state.label, Number(temp.input.value), L, state, async (t) => { await show(t); await pause(); });
        state.samples += 1;
      } finally { button.disabled = false; }
    }}, "sample");
    return [el("div", {class: "vq-live-controls"}, cls.box, temp.box, button), scr.box,
      el("p", {class: "vq-live-legend"}, "Shaded cells: codes not drawn yet (shown as the most common code)."), info];
  };

  // Chapter 7: MaskGIT fills the code map in a few parallel steps; the GPT needs one step per code
  widgets["maskgit-race"] = async function (fig, data, state) {
    const [maskgit, step, decoder] = await Promise.all(
      [session(data.models.maskgit), session(data.models.step), session(data.models.decoder)]);
    const [h, w] = data.shape, L = h * w, M = data.mask_id;
    const stepsOptions = Object.keys(data.counts).map(Number).sort((a, b) => a - b);
    const cls = select("class", data.labels.map((name, i) => [i, name]));
    const steps = select("MaskGIT steps", stepsOptions.map((s) => [s, String(s)]));
    steps.input.value = String(stepsOptions[stepsOptions.length >> 1]);
    const temp = slider("temperature", 0, 1.5, 0.05, 1);
    const tau = slider("choice temperature τ", 0, 8, 0.5, data.choice_temperature);
    const left = el("div", {class: "vq-live-panel"}), right = el("div", {class: "vq-live-panel"});
    const evals = slider("network evaluations", 0, L, 1, 0, (e) => showAt(e));
    const info = el("p", {class: "vq-live-info"}, "Press decode.");
    const screens = [null, null];
    let maskStates = [new Array(L).fill(M)], gptTokens = [];
    async function paint(k, panel, tokens, title) {
      const full = tokens.map((c) => (c === M ? data.background : c));
      const out = await timed(decoder, {codes: int64(full, [1, h, w])}, state.timings.decode);
      const [, , H, W] = out.pixels.dims;
      if (!screens[k]) { screens[k] = screen(H, W, 6); panel.append(el("p", {class: "vq-live-title"}), screens[k].box); }
      panel.querySelector(".vq-live-title").textContent = title;
      draw(screens[k].pixels, out.pixels.data, 0, H, W);
      grid(screens[k], h, w, tokens.flatMap((c, i) => (c === M ? [i] : [])));
    }
    async function showAt(e) {
      const m = maskStates[Math.min(e, maskStates.length - 1)];
      const g = Array.from({length: L}, (_, i) => (i < Math.min(e, gptTokens.length) ? gptTokens[i] : M));
      await paint(0, left, m, `MaskGIT after ${Math.min(e, maskStates.length - 1)} of ${maskStates.length - 1} steps`);
      await paint(1, right, g, `GPT after ${Math.min(e, gptTokens.length)} of ${L} steps`);
      state.shown = {evaluations: e, maskgit: m, gpt: g};
    }
    await showAt(0);
    const button = el("button", {type: "button", onclick: async () => {
      button.disabled = true;
      try {
        state.label = Number(cls.input.value);
        maskStates = await maskgit_decode(maskgit, data, state.label, Number(steps.input.value),
                                          Number(temp.input.value), Number(tau.input.value), state);
        gptTokens = await gpt_sample(step, data, state.label, Number(temp.input.value), L, state);
        state.maskgit_states = maskStates.map((m) => m.slice());
        state.gpt = gptTokens.slice();
        for (let e = 0; e <= L; e++) { evals.input.value = e; evals.box.querySelector("span").textContent = e; await showAt(e); await pause(); }
        info.textContent = `MaskGIT (${data.schedule} schedule): ${maskStates.length - 1} evaluations of ${median(state.timings.maskgit).toFixed(1)} ms; ` +
          `GPT: ${L} cached steps of ${median(state.timings.step).toFixed(1)} ms (medians)`;
        state.runs += 1;
      } finally { button.disabled = false; }
    }}, "decode");
    return [el("div", {class: "vq-live-controls"}, cls.box, steps.box, temp.box, tau.box, button),
      el("div", {class: "vq-live-row"}, left, right), evals.box,
      el("p", {class: "vq-live-legend"}, "Shaded cells: still masked (shown as the most common code)."), info];
  };

  // Chapter 8: scrub through the decoded clip; click a cell and change its space-time code
  widgets["clip-editor"] = async function (fig, data, state) {
    const decoder = await session(data.models.decoder);
    const [t, h, w] = [data.codes.length, data.codes[0].length, data.codes[0][0].length];
    const codes = data.codes.flat(2);
    state.codes = codes;
    state.frame = 0;
    state.chosen = 0;  // a cell of the h x w map at the frame's time step
    let clip = null, scr = null, original = null;
    const info = el("p", {class: "vq-live-info"});
    const frame = slider("frame", 0, data.frames - 1, 1, 0, (f) => { state.frame = f; show(); });
    const code = el("input", {type: "number", min: 0, max: data.codebook_size - 1, step: 1});
    const where = () => Math.floor(state.frame * t / data.frames) * h * w + state.chosen;
    function show() {
      const [, T, , H, W] = clip.dims;
      scr = scr || screen(H, W, 8);
      draw(scr.pixels, clip.data, state.frame * H * W, H, W);
      grid(scr, h, w, [], state.chosen);
      code.value = codes[where()];
      const changed = [];
      for (let f = 0; f < T; f++) {
        let d = 0;
        for (let i = f * H * W; i < (f + 1) * H * W; i++) d = Math.max(d, Math.abs(clip.data[i] - original[i]));
        if (d > 1 / 255) changed.push(f);
      }
      state.changed = changed;
      info.textContent = (data.name ? `The ${data.name} tokenizer: ` : "") + `frame ${state.frame}, code time step ${Math.floor(state.frame * t / data.frames)}, cell ` +
        `(${Math.floor(state.chosen / w)}, ${state.chosen % w}); frames changed by edits: ${changed.length ? changed.join(", ") : "none"}; ` +
        `decoding the clip took ${state.timings.decode.at(-1).toFixed(1)} ms`;
    }
    async function decode() {
      clip = (await timed(decoder, {codes: int64(codes, [1, t, h, w])}, state.timings.decode)).pixels;
      original = original || clip.data.slice();
      state.decodes += 1;
      show();
    }
    await decode();
    scr.overlay.addEventListener("click", (e) => { state.chosen = cellAt(scr, e, h, w); show(); });
    code.addEventListener("change", () => {
      const k = Math.max(0, Math.min(data.codebook_size - 1, Math.round(Number(code.value))));
      if (codes[where()] !== k) { codes[where()] = k; decode(); }
    });
    const reset = el("button", {type: "button", onclick: () => { codes.splice(0, codes.length, ...data.codes.flat(2)); decode(); }}, "reset");
    return [frame.box, el("div", {class: "vq-live-row"}, scr.box,
      el("div", {}, el("label", {}, "code of the outlined cell ", code), reset)), info];
  };

  // ------------------------------------------------------------------ start every figure on the page

  async function start(fig) {
    const note = fig.querySelector(".vq-live-note");
    const state = fig.vqlive = {ready: false, error: null, decodes: 0, samples: 0, runs: 0,
                                timings: {decode: [], step: [], maskgit: [], load: 0}};
    if (typeof WebAssembly !== "object" || typeof DecompressionStream !== "function") {
      note.textContent = "This browser lacks WebAssembly (or DecompressionStream), so this live figure shows a still.";
      state.error = "no WebAssembly";
      return;
    }
    const t0 = state.timings.start = performance.now();  // ms since the page's navigation started
    try {
      const data = JSON.parse(fig.querySelector(".vq-live-data").textContent);
      note.textContent = "Loading the model into your browser…";
      const parts = await widgets[data.widget](fig, data, state);
      const body = el("div", {class: "vq-live-body"}, ...parts);
      fig.querySelector(".vq-live-still").replaceWith(body);
      note.textContent = "Live: the chapter's trained model runs in your browser (ONNX Runtime Web, no server).";
      state.timings.load = performance.now() - t0;
      state.timings.ready = performance.now();  // since the page's navigation started
      state.timings.runtime = runtimeLoaded;  // when the runtime's scripts were loaded and unpacked
      state.ready = true;
    } catch (err) {
      state.error = String(err);
      note.textContent = "The live figure could not start (" + err + "); the still shows what it computes.";
      console.error("vqlive:", err);
    }
  }

  function startAll() { document.querySelectorAll("div.vq-live").forEach(start); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", startAll); else startAll();
})();
