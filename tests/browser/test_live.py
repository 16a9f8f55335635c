"""The live figures of the built book (vqlib.book.live) in headless Chromium, against PyTorch.

Each figure's page is loaded from the local server, the figure is driven as a reader would (clicks
on its canvas and palette, its selects and sliders), and what it computed is read back: the codes,
the pixels it drew on its canvas, the GPT's logits at every step, MaskGIT's states. PyTorch then
decodes the same codes with the chapter's trained model (from the model cache the book build
filled, in the profile it was built with: ``VQLIB_PROFILE``, default quick) and the two must agree.

Tolerances: a drawn pixel is round(255·clip(x, 0, 1)), so it may differ from PyTorch's value by
half a grey level plus ONNX Runtime's float error: 1/255 is allowed. Logits: 1e-3 (float32
arithmetic in another order; measured differences are near 1e-5).

Timings are printed and written to ``_build/screenshots/live_timings.json``, not asserted
(the book's speed targets are measured, not timed tests): how long each page took until its
figure was ready, and the median time of one decode, one GPT step and one MaskGIT evaluation in
the browser. A screenshot of every figure, after it was driven, goes to ``_build/screenshots/``.
A figure page is also opened from ``file://``, where the figure must start too.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import torch

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[browser]'")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from book_site import HTML, SHOTS  # noqa: E402

PIXEL_TOLERANCE = 1 / 255
LOGIT_TOLERANCE = 1e-3
FIGURES = {"code-editor": "chapters/02_vqvae.html", "digit-sampler": "chapters/03_priors.html",
           "maskgit-race": "chapters/07_maskgit.html", "clip-editor": "chapters/08_video_tokenizers.html"}
TIMINGS: dict[str, dict] = {}


# ----------------------------------------------------------------------------- the chapters' models in PyTorch

def _vqvae():
    from vqlib.recipes.ch02_vqvae import train_mnist_vqvae

    return train_mnist_vqvae()[0]


def _class_gpt():
    """Chapter 3's class-conditional GPT, as Chapter 7 loads it from the cache."""
    from vqlib.core.inference import in_batches
    from vqlib.data.mnist import mnist
    from vqlib.priors.gpt import GPT
    from vqlib.recipes.ch03_priors import train_prior
    from vqlib.recipes.ch07_maskgit import mnist_gpt_config, mnist_maskgit_train_config

    vqvae = _vqvae()
    x_train, y_train = mnist("train").tensors
    tokens = in_batches(vqvae.encode, vqvae, x_train).flatten(1)
    gpt = GPT(mnist_gpt_config(vqvae.config.codebook_size, tokens.shape[1]))
    train_prior(gpt, tokens, mnist_maskgit_train_config(), "ch3-gpt-class", cond=y_train, progress=False)
    return gpt.eval()


# ----------------------------------------------------------------------------- the page side

def _open(browser, url: str, widget: str):
    """Load ``url`` and wait for its figure ``widget`` to start -> (figure element, its state)."""
    browser.get_log("browser")
    browser.get(url)
    figure = browser.find_element(By.CSS_SELECTOR, f'div.vq-live[data-widget="{widget}"]')
    assert _wait(browser, figure, "s.ready || s.error", 60), f"{widget} did not start within 60 s"
    state = _state(browser, figure)
    assert state["error"] is None, f"{widget} failed to start: {state['error']}"
    return figure, state


def _state(browser, figure) -> dict:
    return browser.execute_script("return JSON.parse(JSON.stringify(arguments[0].vqlive))", figure)


def _wait(browser, figure, condition: str, timeout: float = 30) -> bool:
    """Poll the figure's state ``s`` until the JavaScript ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not browser.execute_script(f"const s = arguments[0].vqlive; return Boolean(s && ({condition}))", figure):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _pixels(browser, canvas) -> torch.Tensor:
    """The grey levels a canvas shows, at its own resolution -> (H, W) in [0, 1]."""
    w, h, data = browser.execute_script(
        "const c = arguments[0]; return [c.width, c.height, "
        "Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]", canvas)
    return torch.tensor(np.array(data, dtype=np.float32).reshape(h, w, 4)[..., 0] / 255)


def _click_cell(browser, figure, row: int, col: int, rows: int, cols: int, index: int = 0) -> None:
    overlay = figure.find_elements(By.CSS_SELECTOR, "canvas.vq-live-overlay")[index]
    size = overlay.size
    x = (col + 0.5) / cols * size["width"] - size["width"] / 2  # offsets from the element's centre
    y = (row + 0.5) / rows * size["height"] - size["height"] / 2
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", overlay)
    ActionChains(browser).move_to_element_with_offset(overlay, round(x), round(y)).click().perform()


def _set(browser, element, value) -> None:
    """Set a slider or number field as a reader would: its value, then its input and change events."""
    browser.execute_script("const e = arguments[0]; e.value = arguments[1]; "
                           "e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change'))",
                           element, str(value))


def _inputs(figure, kind: str) -> list:
    return figure.find_elements(By.CSS_SELECTOR, f"input[type={kind}]")


def _finish(browser, figure, widget: str) -> dict:
    """Screenshot the figure, check the console, and record the timings -> the final state."""
    state = _state(browser, figure)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", figure)
    figure.screenshot(str(SHOTS / f"live__{widget}.png"))
    errors = [e["message"][:300] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and "/favicon.ico " not in e["message"]]
    assert not errors, f"{widget}: console errors:\n  " + "\n  ".join(errors)
    t = state["timings"]
    TIMINGS[widget] = {"ready_ms": round(t["ready"]), "figure_start_ms": round(t["start"]),
                       "runtime_loaded_ms": round(t["runtime"]), "decode_ms": _median(t["decode"]),
                       "gpt_step_ms": _median(t["step"]), "maskgit_eval_ms": _median(t["maskgit"]),
                       "calls": {k: len(t[k]) for k in ("decode", "step", "maskgit")}}
    SHOTS.joinpath("live_timings.json").write_text(json.dumps(TIMINGS, indent=1))
    print(f"\n{widget}: {TIMINGS[widget]}")
    return state


def _median(values: list) -> float | None:
    return round(statistics.median(values[1:] or values), 2) if values else None  # the first call warms up


def _close(drawn: torch.Tensor, want: torch.Tensor, what: str) -> None:
    error = float((drawn - want.clamp(0, 1)).abs().max())
    assert error <= PIXEL_TOLERANCE, f"{what}: the canvas differs from PyTorch's decode by {error:.4f} > 1/255"


# ----------------------------------------------------------------------------- the figures

@pytest.fixture(scope="module")
def built():
    missing = [page for page in FIGURES.values() if not (HTML / page).is_file()]
    if missing:
        pytest.fail(f"no built book with {missing} at {HTML}: run `make book` first (or set VQLIB_BOOK_HTML)")


def test_code_editor(built, site, browser):
    figure, state = _open(browser, site + FIGURES["code-editor"], "code-editor")
    rows, cols = 7, 7
    _click_cell(browser, figure, 2, 4, rows, cols)
    assert _wait(browser, figure, f"s.chosen === {2 * cols + 4} && s.decodes >= 2"), "the click chose no cell"
    button = figure.find_elements(By.CSS_SELECTOR, ".vq-live-palette button")[5]
    code = int(button.get_attribute("data-code"))
    button.click()
    assert _wait(browser, figure, f"s.codes[{2 * cols + 4}] === {code} && s.decodes >= 3"), "the palette set no code"
    state = _finish(browser, figure, "code-editor")
    codes = torch.tensor(state["codes"]).view(1, rows, cols)
    with torch.no_grad():
        want = _vqvae().decode(codes)[0, 0]
    _close(_pixels(browser, figure.find_element(By.CSS_SELECTOR, "canvas.vq-live-pixels")), want, "code editor")


def test_digit_sampler(built, site, browser):
    figure, _ = _open(browser, site + FIGURES["digit-sampler"], "digit-sampler")
    Select(figure.find_element(By.TAG_NAME, "select")).select_by_value("3")
    _set(browser, _inputs(figure, "range")[0], 0.8)
    figure.find_element(By.XPATH, ".//button[text()='sample']").click()
    assert _wait(browser, figure, "s.samples >= 1", 120), "no sample within 120 s"
    state = _finish(browser, figure, "digit-sampler")
    tokens = torch.tensor(state["tokens"])
    assert state["label"] == 3 and len(tokens) == 49
    gpt, vqvae = _class_gpt(), _vqvae()
    with torch.no_grad():
        cond = torch.tensor([3])
        want = torch.cat([gpt.next_logits(tokens[None, :0], cond), gpt(tokens[None, :-1], cond)[0]])  # (L, K)
        image = vqvae.decode(tokens.view(1, 7, 7))[0, 0]
    error = float((torch.tensor(state["logits"]) - want).abs().max())
    assert error <= LOGIT_TOLERANCE, f"the browser's GPT logits differ from PyTorch's by {error}"
    _close(_pixels(browser, figure.find_element(By.CSS_SELECTOR, "canvas.vq-live-pixels")), image, "digit sampler")


def test_maskgit_race(built, site, browser):
    figure, _ = _open(browser, site + FIGURES["maskgit-race"], "maskgit-race")
    label_select, steps_select = (Select(s) for s in figure.find_elements(By.TAG_NAME, "select"))
    label_select.select_by_value("5")
    steps_select.select_by_value("4")
    temperature, tau, _ = _inputs(figure, "range")
    _set(browser, temperature, 0)  # the most likely code everywhere, and no Gumbel noise: deterministic
    _set(browser, tau, 0)
    figure.find_element(By.XPATH, ".//button[text()='decode']").click()
    assert _wait(browser, figure, "s.runs >= 1", 120), "no decoding within 120 s"
    state = _finish(browser, figure, "maskgit-race")
    data = json.loads(figure.find_element(By.CSS_SELECTOR, "script.vq-live-data").get_attribute("textContent"))
    from vqlib.recipes.ch07_maskgit import train_mnist_maskgit

    maskgit, gpt, vqvae = train_mnist_maskgit()[0].eval(), _class_gpt(), _vqvae()
    mask, cond, counts = data["mask_id"], torch.tensor([5]), data["counts"]["4"]
    states = torch.tensor(state["maskgit_states"])  # (T + 1, L) every state the browser went through
    assert len(states) == 5 and (states[0] == mask).all() and (states[-1] != mask).all()
    with torch.no_grad():
        for t in range(4):  # each step is MaskGIT.decode's: argmax at every masked code, the least sure re-masked
            before, after = states[t], states[t + 1]
            logits = maskgit(before[None], cond)[0]  # (L, K)
            drawn, log_p = logits.argmax(-1), logits.log_softmax(-1).max(-1).values
            was = before == mask
            kept = was & (after != mask)
            assert torch.equal(after[kept], drawn[kept]), f"step {t + 1}: a code that is not the most likely"
            assert torch.equal(after[~was], before[~was]), f"step {t + 1}: a known code changed"
            assert int((after == mask).sum()) == counts[t], f"step {t + 1}: not the schedule's count"
            remasked = was & (after == mask)
            if remasked.any():
                assert log_p[kept].min() >= log_p[remasked].max() - 1e-4, f"step {t + 1}: a surer code was re-masked"
        gpt_logits = torch.cat([gpt.next_logits(torch.zeros(1, 0, dtype=torch.long), cond),
                                gpt(torch.tensor([state["gpt"][:-1]]), cond)[0]])  # (L, K)
        chosen = gpt_logits.gather(1, torch.tensor(state["gpt"])[:, None])[:, 0]
        assert (gpt_logits.max(-1).values - chosen).max() <= LOGIT_TOLERANCE, "the GPT drew a code that is not the most likely"
        image = vqvae.decode(states[-1].view(1, 7, 7))[0, 0]
    _close(_pixels(browser, figure.find_elements(By.CSS_SELECTOR, "canvas.vq-live-pixels")[0]), image, "MaskGIT panel")


def test_clip_editor(built, site, browser):
    figure, state = _open(browser, site + FIGURES["clip-editor"], "clip-editor")
    data = json.loads(figure.find_element(By.CSS_SELECTOR, "script.vq-live-data").get_attribute("textContent"))
    t, h, w = len(data["codes"]), len(data["codes"][0]), len(data["codes"][0][0])
    _set(browser, _inputs(figure, "range")[0], 3)
    _click_cell(browser, figure, 3, 5, h, w)
    assert _wait(browser, figure, f"s.frame === 3 && s.chosen === {3 * w + 5}"), "the frame or the cell was not chosen"
    where = (3 * t // data["frames"], 3, 5)
    new = (data["codes"][where[0]][3][5] + 17) % data["codebook_size"]
    _set(browser, _inputs(figure, "number")[0], new)
    assert _wait(browser, figure, "s.decodes >= 2"), "the edit decoded nothing"
    state = _finish(browser, figure, "clip-editor")
    from vqlib.recipes.ch08_video_tokenizers import train_moving_mnist_tokenizer

    model = train_moving_mnist_tokenizer(data["name"])[0].eval()
    codes = torch.tensor(data["codes"])[None]
    edited = codes.clone()
    edited[(0, *where)] = new
    assert torch.equal(torch.tensor(state["codes"]).view_as(codes), edited)
    with torch.no_grad():
        before, after = model.decode(codes)[0, :, 0].clamp(0, 1), model.decode(edited)[0, :, 0].clamp(0, 1)  # (T, H, W)
    _close(_pixels(browser, figure.find_element(By.CSS_SELECTOR, "canvas.vq-live-pixels")), after[3], "clip frame 3")
    change = (after - before).abs().flatten(1).amax(1)  # (T,) the largest change of each frame
    reported = set(state["changed"])
    assert {f for f in range(len(change)) if change[f] > 2 / 255} <= reported
    assert not {f for f in reported if change[f] < 0.5 / 255}, "a frame the edit did not change is listed"


def test_a_figure_starts_from_file_urls(built, browser):
    """Chromium forbids fetch() and module imports on file:// pages; the figures load without them."""
    figure, _ = _open(browser, (HTML / FIGURES["code-editor"]).resolve().as_uri(), "code-editor")
    errors = [e["message"][:300] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and ("vqlive" in e["message"] or "/live/" in e["message"])]
    assert not errors, "console errors of the live figure from file://:\n  " + "\n  ".join(errors)


def test_without_webassembly_the_still_stays(built, site, browser):
    """In a browser without WebAssembly (here: removed before the page's scripts run) the still
    stays and the figure says why."""
    hidden = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                     {"source": "delete window.WebAssembly;"})["identifier"]
    try:
        browser.get(site + FIGURES["code-editor"])
        figure = browser.find_element(By.CSS_SELECTOR, 'div.vq-live[data-widget="code-editor"]')
        assert _wait(browser, figure, "s.error", 30), "the figure did not notice the missing WebAssembly"
        still = figure.find_element(By.CSS_SELECTOR, "img.vq-live-still")
        assert still.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", still) > 0
        assert "lacks WebAssembly" in figure.find_element(By.CSS_SELECTOR, ".vq-live-note").text
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": hidden})
