import matplotlib.pyplot as plt
import pytest
import torch

from vqlib.book import plot
from vqlib.training.loop import History


def test_make_grid_places_every_image():
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 3) / 10
    grid = plot.make_grid(x, nrow=3, pad=1, value=1.0)
    assert grid.shape == (1, 2 * 3 - 1, 3 * 4 - 1)
    assert grid[0, 0, 0] == 0.0 and grid[0, 0, 4] == 0.1 and grid[0, 3, 4] == 0.4
    assert grid[0, 3, 8] == 1.0  # the empty sixth cell is background


def test_figures_render():
    x = torch.rand(6, 3, 8, 8)
    assert plot.image_grid(x, nrow=3).images
    fig = plot.compare(x, x.flip(0), n=4)
    assert len(fig.axes) == 2
    hist = History(train=[{"step": s, "loss": 1 / s} for s in range(1, 5)])
    assert len(plot.curves(hist, ["loss"], log=True).lines) == 1
    plt.close("all")


def test_animation_plays_without_a_kernel(monkeypatch):
    monkeypatch.setenv("VQLIB_BUILD", "1")
    html = plot.explore(torch.rand(4, 1, 8, 8), labels=list("abcd")).data
    assert "<script" in html and "animation" in html.lower()
    assert not plot.live_kernel()


@pytest.mark.parametrize("bad", [torch.rand(8, 8), torch.rand(2, 8, 8)])
def test_bad_images_are_refused(bad):
    with pytest.raises(ValueError, match="expected"):
        plot.image_grid(bad) if bad.dim() == 2 else plot.to_numpy(bad)


def test_labels_must_match_frames():
    with pytest.raises(ValueError, match="2 labels for 3 frames"):
        plot.explore(torch.rand(3, 1, 4, 4), labels=["a", "b"])


def test_strips_draw_one_row_per_story_and_check_the_texts():
    import matplotlib.pyplot as plt

    from vqlib.book.plot import strips

    panels = torch.rand(2, 3, 3, 8, 8)
    fig = strips(panels, [["a", "b", "c"], ["d", "e", "f"]], titles=["one", "two"])
    assert len(fig.axes) == 6 and fig.axes[0].get_title(loc="left") == "one"
    plt.close(fig)
    with pytest.raises(ValueError, match="N lists of P texts"):
        strips(panels, [["a", "b"], ["c", "d"]])
