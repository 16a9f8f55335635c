"""Pictures for the chapters: image grids, reconstructions, curves, and animations.

Dimension key: B batch, T frames, C channels (1 or 3), H W height and width. Images are float
tensors in [0, 1] (values outside are clipped for display).

Animations are built for two readers at once: in the built book (``VQLIB_BUILD=1``) they are
JavaScript animations with a slider that play in the static HTML page with no kernel; in a live
Jupyter session ``explore`` shows an ``ipywidgets`` slider instead. ``animate_videos`` plays
several clips side by side, in step (an input next to its reconstructions); ``write_video`` saves
a clip as a GIF or an H.264 MP4.
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
    """Plot logged quantities of a ``vqlib.training.loop.History`` against the step."""
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


def strips(panels: torch.Tensor, texts: Sequence[Sequence[str]], titles: Sequence[str] | None = None,
           width: int = 16) -> plt.Figure:
    """Comic strips: one row per story of panels (N, P, C, H, W), each panel's text under it
    (``texts``: N lists of P strings, wrapped at ``width`` characters), an optional title per row."""
    import textwrap

    if panels.dim() != 5 or len(texts) != len(panels) or any(len(t) != panels.shape[1] for t in texts):
        raise ValueError(f"need panels (N, P, C, H, W) and N lists of P texts, got {tuple(panels.shape)} and "
                         f"{[len(t) for t in texts]}")
    n, p = panels.shape[:2]
    fig, axes = plt.subplots(n, p, figsize=(1.6 * p, 2.1 * n), squeeze=False)
    for i in range(n):
        for j in range(p):
            _show(axes[i, j], panels[i, j])
            axes[i, j].text(0.5, -0.05, textwrap.fill(texts[i][j], width), transform=axes[i, j].transAxes,
                            ha="center", va="top", fontsize=7)
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=8, loc="left")
    fig.tight_layout()
    return fig


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


# ----------------------------------------------------------------------------- videos side by side, to files

def _clips(videos: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    clips = list(videos)
    if not clips or any(not torch.is_tensor(v) or v.dim() != 4 or v.shape[1] not in (1, 3) for v in clips):
        raise ValueError("expected a non-empty list of clips (T, C, H, W) with C = 1 or 3, got shapes "
                         f"{[tuple(v.shape) if torch.is_tensor(v) else type(v).__name__ for v in clips]}")
    if len({len(v) for v in clips}) != 1:
        raise ValueError(f"the clips must have the same number of frames, got {[len(v) for v in clips]}")
    return clips


def animate_videos(videos: Sequence[torch.Tensor], labels: Sequence[str] | None = None, fps: int = 4,
                   size: float = 2.0):
    """One JavaScript animation (plays in the static page) of clips (T, C, H, W) side by side, in step.

    Use it for a clip next to its reconstructions: ``animate_videos([x, x_hat], ["input", "tokens"])``.
    """
    from IPython.display import HTML

    clips = _clips(videos)
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"got {len(labels)} labels for {len(clips)} clips")
    fig, axes = plt.subplots(1, len(clips), figsize=(size * len(clips), size + 0.4), squeeze=False)
    images = []
    for i, (ax, clip) in enumerate(zip(axes[0], clips)):
        ax.set_axis_off()
        images.append(ax.imshow(to_numpy(clip[0]), cmap="gray", vmin=0, vmax=1, interpolation="nearest"))
        ax.set_title(labels[i] if labels else "", fontsize=10)
    counter = fig.suptitle(f"frame 1 of {len(clips[0])}", fontsize=9)
    fig.tight_layout()

    def draw(t: int):
        for image, clip in zip(images, clips):
            image.set_data(to_numpy(clip[t]))
        counter.set_text(f"frame {t + 1} of {len(clips[0])}")
        return (*images, counter)

    anim = animation.FuncAnimation(fig, draw, frames=len(clips[0]), interval=1000 / fps, blit=False)
    html = anim.to_jshtml(fps=fps, default_mode="loop")
    plt.close(fig)
    return HTML(html)


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = 8, scale: int = 1) -> None:
    """Write frames (T, C, H, W) in [0, 1] to ``path``: a looping GIF (Pillow) or an H.264 MP4 (PyAV).

    ``scale`` enlarges every pixel to scale×scale (nearest neighbour), for tiny clips.
    """
    from pathlib import Path

    clips = _clips([frames])[0]
    path = Path(path)
    arrays = [(to_numpy(f) * 255).round().astype(np.uint8) for f in clips]  # (H, W) or (H, W, 3)
    arrays = [a.repeat(scale, 0).repeat(scale, 1) for a in arrays]
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(a) for a in arrays]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif path.suffix.lower() == ".mp4":
        import av

        h, w = arrays[0].shape[:2]
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"  # 4:2:0 needs even sizes
            for a in arrays:
                rgb = np.pad(np.stack([a] * 3, -1) if a.ndim == 2 else a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    else:
        raise ValueError(f"write_video writes .gif or .mp4 files, got {path.name!r}")
