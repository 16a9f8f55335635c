"""Pictures for the chapters: image grids, reconstructions, curves, and animations.

Dimension key: B batch, T frames, C channels (1 or 3), H W height and width. Images are float
tensors in [0, 1] (values outside are clipped for display).

Animations are built for two readers at once: in the built book (``VQLIB_BUILD=1``) they are
JavaScript animations with a slider that play in the static HTML page with no kernel; in a live
Jupyter session ``explore`` shows an ``ipywidgets`` slider instead.
"""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import animation


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, value: float = 1.0) -> torch.Tensor:
    """Tile a batch (B, C, H, W) into one image (C, rows·(H+pad)-pad, nrow·(W+pad)-pad)."""
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = x.new_full((c, rows * (h + pad) - pad, nrow * (w + pad) - pad), value)  # (C, H', W')
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[:, r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = x[i]
    return grid


def to_numpy(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) float array ready for imshow."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected one image (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    a = image.detach().float().clamp(0, 1).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _show(ax: plt.Axes, image: torch.Tensor, title: str | None = None) -> plt.Axes:
    ax.imshow(to_numpy(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def image_grid(x: torch.Tensor, nrow: int | None = None, ax: plt.Axes | None = None,
               title: str | None = None) -> plt.Axes:
    """Show a batch (B, C, H, W) as one grid and return the Axes."""
    if ax is None:
        ncol = nrow or math.ceil(math.sqrt(max(1, x.shape[0])))
        rows = math.ceil(x.shape[0] / ncol)
        _, ax = plt.subplots(figsize=(min(12, 0.6 * ncol + 1), min(12, 0.6 * rows + 0.6)))
    return _show(ax, make_grid(x, nrow), title)


def compare(x: torch.Tensor, x_hat: torch.Tensor, n: int = 8,
            titles: Sequence[str] = ("input", "reconstruction")) -> plt.Figure:
    """Inputs above their reconstructions: two (or more, with ``titles``) rows of n images."""
    rows = [x[:n], x_hat[:n]]
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * n, 1.25 * len(rows) + 0.3))
    for ax, batch, title in zip(axes, rows, titles):
        image_grid(batch, nrow=n, ax=ax, title=title)
    fig.tight_layout()
    return fig


def curves(history, keys: str | Sequence[str], split: str = "train", ax: plt.Axes | None = None,
           log: bool = False) -> plt.Axes:
    """Plot logged quantities of a ``vqlib.train.History`` against the step."""
    ax = ax or plt.subplots(figsize=(5, 3.2))[1]
    for key in [keys] if isinstance(keys, str) else keys:
        steps, values = history.series(key, split)
        ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    if log:
        ax.set_yscale("log")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return ax


def _frames(frames: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    frames = list(frames)
    if not frames or any(f.dim() != 3 for f in frames):
        raise ValueError("expected frames (T, C, H, W) or a non-empty list of (C, H, W) images")
    return frames


def animate(frames: torch.Tensor | Sequence[torch.Tensor], fps: int = 8, titles: Sequence[str] | None = None,
            size: float = 3.0):
    """A JavaScript animation (plays in the static page, with a slider) of frames (T, C, H, W)."""
    from IPython.display import HTML

    frames = _frames(frames)
    h, w = frames[0].shape[-2:]
    fig, ax = plt.subplots(figsize=(size * w / max(h, w), size * h / max(h, w) + (0.3 if titles else 0)))
    ax.set_axis_off()
    im = ax.imshow(to_numpy(frames[0]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    title = ax.set_title(titles[0] if titles else "", fontsize=10)
    fig.tight_layout()

    def draw(i: int):
        im.set_data(to_numpy(frames[i]))
        title.set_text(titles[i] if titles else "")
        return im, title

    anim = animation.FuncAnimation(fig, draw, frames=len(frames), interval=1000 / fps, blit=True)
    html = anim.to_jshtml(fps=fps, default_mode="loop")
    plt.close(fig)
    return HTML(html)


def _png(image: torch.Tensor, scale: int = 4) -> bytes:
    from PIL import Image

    a = (to_numpy(image) * 255).round().astype(np.uint8)
    img = Image.fromarray(a)
    buf = io.BytesIO()
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def live_kernel() -> bool:
    """True in an interactive Jupyter session, False in the book build and in plain Python."""
    if os.environ.get("VQLIB_BUILD", "") not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def explore(frames: torch.Tensor | Sequence[torch.Tensor], labels: Sequence[str] | None = None, fps: int = 4):
    """Browse frames (T, C, H, W): a live ipywidgets slider in Jupyter, an animation in the static book."""
    frames = _frames(frames)
    if labels is not None and len(labels) != len(frames):
        raise ValueError(f"got {len(labels)} labels for {len(frames)} frames")
    if not live_kernel():
        return animate(frames, fps=fps, titles=labels)
    import ipywidgets as widgets

    pngs = [_png(f) for f in frames]
    slider = widgets.IntSlider(value=0, min=0, max=len(frames) - 1, description="frame")
    image = widgets.Image(value=pngs[0], format="png")
    caption = widgets.Label(labels[0] if labels else "")

    def on_change(change) -> None:
        image.value = pngs[change["new"]]
        caption.value = labels[change["new"]] if labels else ""

    slider.observe(on_change, names="value")
    return widgets.VBox([slider, caption, image])
