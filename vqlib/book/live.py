"""Live figures: the chapters' trained models running in the reader's browser, or in Jupyter.

In the built book (``VQLIB_BUILD=1``) each function returns an HTML figure that carries its models
as ONNX graphs (``vqlib.core.onnx``) and a still picture. The page's script
(``book/_static/live/vqlive.js``, one small module for every figure) runs the graphs with ONNX Runtime
Web, which the book's build vendors from the npm registry (``book/_ext/vqlib_live.py``): no kernel,
no server, and the page works offline, from a plain static server or from ``file://``. Without
JavaScript or WebAssembly the still stays and the figure says so. In a live Jupyter session the
same function returns an ``ipywidgets`` version that runs PyTorch.

The four figures:

- ``code_editor``: a VQ-VAE's code map; click a cell, pick a code from a palette, the image is
  decoded again (Chapter 2).
- ``digit_sampler``: a class-conditional GPT draws a code map token by token with its key/value
  cache (``vqlib.priors.gpt_step.GPTStep``) and the decoded digit fills in (Chapter 3).
- ``maskgit_race``: MaskGIT decodes a code map in a few parallel steps beside the GPT's one token
  per step (Chapter 7).
- ``clip_editor``: a video tokenizer's decoded clip; scrub through its frames and change one
  space-time code (Chapter 8).

The figures read their models' shapes from the models themselves; the still and the first state
are computed here with PyTorch. ``tests/browser/test_live.py`` drives every figure in Chromium and
compares the pixels it draws with PyTorch's decode of the same codes.

Dimension key: h w a code map, t h w a video code grid, K codebook size, L = h·w codes.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from vqlib.book.plot import _png, live_kernel, make_grid
from vqlib.core.inference import in_batches
from vqlib.core.onnx import Method, export_onnx

STILL_NOTE = ("A live figure: in a browser with JavaScript and WebAssembly it runs the chapter's trained model. "
              "Without them, this still stays.")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _figure(widget: str, models: Mapping[str, bytes], data: Mapping, still: torch.Tensor, alt: str, scale: int = 4):
    """The HTML of a live figure: its still (C, H, W) in [0, 1], the note, and its models and data as JSON."""
    from IPython.display import HTML

    payload = json.dumps({"widget": widget, "models": {k: _b64(v) for k, v in models.items()}, **data})
    payload = payload.replace("</", "<\\/")  # nothing inside may close the script element
    return HTML(
        f'<div class="vq-live" data-widget="{widget}">'
        f'<img class="vq-live-still" alt="{html.escape(alt)}" src="data:image/png;base64,{_b64(_png(still, scale))}">'
        f'<p class="vq-live-note">{STILL_NOTE}</p>'
        f'<noscript><p>JavaScript is off: this is a still of a live figure.</p></noscript>'
        f'<script type="application/json" class="vq-live-data">{payload}</script></div>')


def _decoder(tokenizer: nn.Module, codes: torch.Tensor) -> bytes:
    """The ONNX graph of ``tokenizer.decode`` for code grids shaped like ``codes`` (1, ...)."""
    return export_onnx(Method(tokenizer, "decode"), (codes,), ["codes"], ["pixels"])


def _step_graph(step: nn.Module) -> bytes:
    """The ONNX graph of one GPT step (``vqlib.priors.gpt_step.GPTStep``), inputs and outputs named for the page."""
    return export_onnx(step, step.first_inputs(), ["token", "position", "label", "keys", "values"],
                       ["logits", "keys_out", "values_out"])


def _decode_all(tokenizer: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Code grids (B, ...) long -> the decoded images or clips, clipped to [0, 1], on the CPU."""
    return in_batches(lambda c: tokenizer.decode(c).clamp(0, 1), tokenizer, codes)


def _decode(tokenizer: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """One code grid (...) long, without the batch -> its decoded image or clip (``_decode_all``)."""
    return _decode_all(tokenizer, codes[None])[0]


def _ints(t: torch.Tensor) -> list:
    return t.cpu().long().tolist()


# ----------------------------------------------------------------------------- Chapter 2: the code map editor

def palette_tiles(tokenizer: nn.Module, codes: Sequence[int], shape: tuple[int, int]) -> torch.Tensor:
    """What each code draws: the decoded code map of ``shape`` holding that code everywhere -> (P, C, H, W)."""
    maps = torch.tensor(list(codes)).view(-1, 1, 1).expand(-1, *shape).contiguous()  # (P, h, w)
    return _decode_all(tokenizer, maps)


def palette(tokenizer: nn.Module, usage: torch.Tensor, shape: tuple[int, int], size: int = 48,
            min_change: float = 0.02) -> tuple[list[int], torch.Tensor]:
    """Codes for a palette: the most used ones (``usage`` (K,) counts), skipping a code whose tile
    (``palette_tiles``) differs from an earlier pick's by less than ``min_change`` (mean absolute
    pixel difference): many codes draw the same blank paper. -> (codes, tiles (P, C, H, W))."""
    order = _ints(usage.argsort(descending=True)[:4 * size])
    tiles = palette_tiles(tokenizer, order, shape)  # (4·size, C, H, W)
    kept: list[int] = []
    for i in range(len(order)):
        if len(kept) < size and all((tiles[i] - tiles[j]).abs().mean() >= min_change for j in kept):
            kept.append(i)
    return [order[i] for i in kept], tiles[kept]


def code_editor(tokenizer: nn.Module, codes: torch.Tensor, usage: torch.Tensor, palette_size: int = 48):
    """Edit the code map ``codes`` (h, w) of an image tokenizer cell by cell, decoding as you go.

    ``usage`` (K,): how often each code is used (e.g. over the test images' maps); the palette
    offers up to ``palette_size`` of the most used codes that look different (``palette``), each
    drawn as the image of a map made of it alone.
    """
    if codes.dim() != 2 or usage.dim() != 1:
        raise ValueError(f"need codes (h, w) and usage (K,), got {tuple(codes.shape)} and {tuple(usage.shape)}")
    palette_codes, tiles = palette(tokenizer, usage, tuple(codes.shape), palette_size)
    if live_kernel():
        return _code_editor_jupyter(tokenizer, codes, palette_codes)
    image = _decode(tokenizer, codes)
    data = {"codes": _ints(codes), "palette": palette_codes,
            "tiles": [_b64(_png(tile, scale=1)) for tile in tiles]}
    return _figure("code-editor", {"decoder": _decoder(tokenizer, codes[None].cpu())}, data, image,
                   "a decoded code map", scale=8)


def _code_editor_jupyter(tokenizer, codes, palette_codes):
    import ipywidgets as widgets

    codes = codes.clone()
    h, w = codes.shape
    row, col = widgets.IntSlider(0, 0, h - 1, description="row"), widgets.IntSlider(0, 0, w - 1, description="column")
    code = widgets.Dropdown(options=palette_codes, value=None, description="code")
    image = widgets.Image(value=_png(_decode(tokenizer, codes), 8), format="png")
    label = widgets.Label()
    syncing = [False]  # the dropdown follows the chosen cell without editing it

    def show(_=None) -> None:
        held = int(codes[row.value, col.value])
        label.value = f"cell ({row.value}, {col.value}) holds code {held}"
        syncing[0] = True
        code.value = held if held in palette_codes else None
        syncing[0] = False

    def put(change) -> None:
        if syncing[0] or change["new"] is None:
            return
        codes[row.value, col.value] = change["new"]
        image.value = _png(_decode(tokenizer, codes), 8)
        show()

    row.observe(show, "value")
    col.observe(show, "value")
    code.observe(put, "value")
    show()
    return widgets.VBox([widgets.HBox([row, col]), code, label, image])


# ----------------------------------------------------------------------------- Chapter 3: sample a digit

def digit_sampler(step: nn.Module, tokenizer: nn.Module, shape: tuple[int, int], background: int,
                  labels: Sequence[str], temperature: float = 1.0, seed: int = 0):
    """Draw a code map of ``shape`` (h, w) token by token from a class-conditional GPT and watch the
    decoded image fill in; codes not drawn yet show as ``background`` (the most used code).

    ``step``: the GPT's one-step graph (``vqlib.priors.gpt_step.GPTStep``); ``labels``: the class names.
    """
    h, w = shape
    if step.gpt.config.block_size < h * w:
        raise ValueError(f"the GPT's block_size {step.gpt.config.block_size} is shorter than a {h}x{w} code map")
    if live_kernel():
        return _sampler_jupyter(step, tokenizer, shape, background, labels, temperature)
    tokens = _sample_steps(step, h * w, 0, temperature, torch.Generator().manual_seed(seed))  # the still
    data = {"shape": [h, w], "background": background, "labels": list(labels), "temperature": temperature,
            "cache_shape": list(step.cache_shape)}
    models = {"step": _step_graph(step), "decoder": _decoder(tokenizer, tokens.view(1, h, w))}
    return _figure("digit-sampler", models, data, _decode(tokenizer, tokens.view(h, w)),
                   f"a digit of class {labels[0]} drawn by the GPT", scale=8)


@torch.no_grad()
def _sample_steps(step: nn.Module, length: int, label: int, temperature: float, generator: torch.Generator,
                  each: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """``length`` codes drawn by ``step`` one at a time (temperature 0: the most likely) -> (length,) long."""
    token, position, label_t, keys, values = step.first_inputs(label)
    tokens = torch.zeros(length, dtype=torch.long)
    for t in range(length):
        logits, keys, values = step(token, position, label_t, keys, values)
        if temperature > 0:
            tokens[t] = torch.multinomial((logits[0] / temperature).softmax(-1), 1, generator=generator)[0]
        else:
            tokens[t] = logits[0].argmax()
        token, position = tokens[t:t + 1], torch.tensor(t + 1)
        if each is not None:
            each(tokens[:t + 1])
    return tokens


def _sampler_jupyter(step, tokenizer, shape, background, labels, temperature):
    import ipywidgets as widgets

    h, w = shape
    label = widgets.Dropdown(options=[(name, i) for i, name in enumerate(labels)], description="class")
    temp = widgets.FloatSlider(value=temperature, min=0, max=1.5, step=0.05, description="temperature")
    button = widgets.Button(description="sample")
    image = widgets.Image(format="png")
    seeds = iter(range(1, 1 << 30))

    def draw(drawn: torch.Tensor) -> None:
        full = torch.full((h * w,), background, dtype=torch.long)
        full[:len(drawn)] = drawn
        image.value = _png(_decode(tokenizer, full.view(h, w)), 8)

    def sample(_=None) -> None:
        generator = torch.Generator().manual_seed(next(seeds))
        _sample_steps(step, h * w, label.value, temp.value, generator, each=draw)

    button.on_click(sample)
    draw(torch.zeros(0, dtype=torch.long))
    return widgets.VBox([widgets.HBox([label, temp, button]), image])


# ----------------------------------------------------------------------------- Chapter 7: MaskGIT beside the GPT

def maskgit_race(maskgit: nn.Module, step: nn.Module, tokenizer: nn.Module, shape: tuple[int, int],
                 counts: Mapping[int, Sequence[int]], schedule: str, background: int, labels: Sequence[str],
                 decode: Callable[..., torch.Tensor], choice_temperature: float = 4.5):
    """MaskGIT decodes a code map in T parallel steps; the GPT (``step``) takes one step per code.

    ``counts`` {T: how many codes stay masked after each of T steps} for the step counts the reader
    may pick, by the decoding ``schedule`` (``vqlib.priors.maskgit.mask_counts(L, T, schedule)``);
    ``decode(label, steps)`` -> MaskGIT's states (T + 1, L) for the still (``MaskGIT.decode`` with
    that schedule); ``choice_temperature``: the chapter's chosen τ.
    """
    h, w = shape
    steps = sorted(counts)
    K = maskgit.config.vocab_size
    if live_kernel():
        return _race_jupyter(step, tokenizer, shape, background, labels, decode, steps, K)
    with torch.random.fork_rng():  # the still leaves the chapter's random stream alone
        torch.manual_seed(0)
        states = decode(0, steps[len(steps) // 2])  # (T + 1, L)
    shown = states.masked_fill(states == K, background).view(-1, h, w)
    still = make_grid(_decode_all(tokenizer, shown), nrow=len(shown))
    tokens = torch.full((1, h * w), K, dtype=torch.long)
    models = {"maskgit": export_onnx(maskgit, (tokens, torch.tensor([0])), ["tokens", "label"], ["logits"]),
              "step": _step_graph(step),
              "decoder": _decoder(tokenizer, tokens.view(1, h, w).clamp_max(K - 1))}
    data = {"shape": [h, w], "background": background, "labels": list(labels), "mask_id": K,
            "counts": {str(t): list(c) for t, c in counts.items()}, "schedule": schedule,
            "choice_temperature": choice_temperature,
            "cache_shape": list(step.cache_shape)}
    return _figure("maskgit-race", models, data, still, "MaskGIT's decoding states, left to right")


def _race_jupyter(step, tokenizer, shape, background, labels, decode, steps, mask_id):
    import ipywidgets as widgets

    h, w = shape
    label = widgets.Dropdown(options=[(name, i) for i, name in enumerate(labels)], description="class")
    n_steps = widgets.SelectionSlider(options=steps, value=steps[len(steps) // 2], description="steps")
    button = widgets.Button(description="decode")
    maskgit_strip, gpt_strip = widgets.Image(format="png"), widgets.Image(format="png")
    seeds = iter(range(1, 1 << 30))

    def strip(maps: torch.Tensor) -> bytes:
        shown = maps.masked_fill(maps == mask_id, background).view(-1, h, w)
        return _png(make_grid(_decode_all(tokenizer, shown), nrow=len(shown)), 4)

    def run(_=None) -> None:
        states = decode(label.value, n_steps.value)  # (T + 1, L)
        tokens = _sample_steps(step, h * w, label.value, 1.0, torch.Generator().manual_seed(next(seeds)))
        same_evaluations = torch.full_like(states, mask_id)  # the GPT after as many evaluations: t codes
        for t in range(len(states)):
            same_evaluations[t, :t] = tokens[:t]
        maskgit_strip.value, gpt_strip.value = strip(states), strip(same_evaluations)

    button.on_click(run)
    run()
    return widgets.VBox([widgets.HBox([label, n_steps, button]), widgets.Label("MaskGIT, step by step"),
                         maskgit_strip, widgets.Label("the GPT after as many network evaluations"), gpt_strip])


# ----------------------------------------------------------------------------- Chapter 8: scrub and edit a clip

def clip_editor(tokenizer: nn.Module, codes: torch.Tensor, name: str = ""):
    """Scrub through the clip a video tokenizer decodes from ``codes`` (t, h, w), and change one
    space-time code: every frame that code reaches is decoded again. ``name``: the tokenizer's, for the page."""
    if codes.dim() != 3:
        raise ValueError(f"need a video code grid (t, h, w), got {tuple(codes.shape)}")
    if live_kernel():
        return _clip_jupyter(tokenizer, codes)
    clip = _decode(tokenizer, codes)  # (T, C, H, W)
    data = {"codes": _ints(codes), "codebook_size": tokenizer.config.codebook_size,
            "frames": clip.shape[0], "name": name}
    return _figure("clip-editor", {"decoder": _decoder(tokenizer, codes[None].cpu())}, data,
                   make_grid(clip, nrow=len(clip)), "the decoded clip, frame by frame")


def _clip_jupyter(tokenizer, codes):
    import ipywidgets as widgets

    codes = codes.clone()
    t, h, w = codes.shape
    clip = [_decode(tokenizer, codes)]
    frames = clip[0].shape[0]
    frame = widgets.IntSlider(0, 0, frames - 1, description="frame")
    row, col = widgets.IntSlider(0, 0, h - 1, description="row"), widgets.IntSlider(0, 0, w - 1, description="column")
    code = widgets.BoundedIntText(int(codes[0, 0, 0]), min=0, max=tokenizer.config.codebook_size - 1,
                                  description="code")
    image = widgets.Image(format="png")

    def cell() -> tuple[int, int, int]:
        return frame.value * t // frames, row.value, col.value

    def show(_=None) -> None:
        image.value = _png(clip[0][frame.value], 8)
        code.value = int(codes[cell()])

    def put(change) -> None:
        if int(codes[cell()]) != change["new"]:
            codes[cell()] = change["new"]
            clip[0] = _decode(tokenizer, codes)
            show()

    for slider in (frame, row, col):
        slider.observe(show, "value")
    code.observe(put, "value")
    show()
    return widgets.VBox([frame, widgets.HBox([row, col, code]), image])

