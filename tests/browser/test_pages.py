"""The built book in a real browser (headless Chromium): every page loads without JavaScript errors,
its math is typeset, its images load, its links inside the book resolve, its animations play, its
folded solutions open, and each chapter offers its .ipynb and .md downloads. A full-page screenshot
of every page goes to ``_build/screenshots/`` (CI keeps them as artifacts).

    make book && make browser-test
    VQLIB_BOOK_HTML=/tmp/jb/_build/html pytest tests/browser     # a book built elsewhere

Not part of ``make test`` (pyproject's ``norecursedirs`` skips this folder): it needs the built
book and Chromium with its driver (Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import time
import urllib.error
import urllib.request
from urllib.parse import urldefrag

import jupytext
import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[browser]'")
from selenium.webdriver.common.by import By  # noqa: E402

from book_site import HTML, SHOTS  # noqa: E402

# the book's own pages; _static, _sources and _images hold assets, not pages
PAGES = sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
               if not p.relative_to(HTML).parts[0].startswith("_")) if HTML.is_dir() else []

# a code line that makes an animation (not a comment)
ANIMATION_CALL = re.compile(r"^[^#]*\b(explore|animate)\(", re.MULTILINE)
# Text that means math was not typeset: TeX delimiters or a macro with an argument left in the
# text, or inline TeX in dollars ($z_e$); code blocks, scripts and typeset math are not searched.
RAW_TEX = re.compile(r"\$\$|\\[(\[]|\\[a-zA-Z]+\{|\$[^$\s][^$]*[\\^_][^$]*\$")
VISIBLE_TEXT_JS = """
const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
const texts = [];
while (walker.nextNode()) {
  const node = walker.currentNode;
  if (!node.parentElement.closest(skip) && node.textContent.trim()) texts.push(node.textContent);
}
return texts.join('\\n');
"""


def _eventually(condition, timeout: float = 5.0) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@functools.cache
def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _screenshot(driver, page: str) -> None:
    """The whole page, not just the window (Chrome DevTools' capture beyond the viewport)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 30000), "scale": 1}})
    target = SHOTS / (page.removesuffix(".html").replace("/", "__") + ".png")
    target.write_bytes(base64.b64decode(shot["data"]))


def _wait_for_math(driver) -> str | None:
    """Wait for MathJax to typeset the page; return why not, or None."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        if (!document.querySelector('.math')) return done(null);
        if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return done('MathJax did not load');
        MathJax.startup.promise.then(() => done(null), e => done('MathJax failed: ' + e));
    """)


def _broken_images(driver) -> list[str]:
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const images = Array.from(document.images).filter(i => i.getAttribute('src'));
        images.forEach(i => { i.loading = 'eager'; });
        Promise.all(images.map(i => i.decode().then(() => null, () => null))).then(() =>
            done(images.filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src').slice(0, 120))));
    """)


def _check_animations(driver) -> list[str]:
    """Press play on every matplotlib animation; the frame shown must change. Return the failures."""
    problems = []
    for i, animation in enumerate(driver.find_elements(By.CSS_SELECTOR, "div.animation")):
        image = animation.find_element(By.TAG_NAME, "img")
        slider = animation.find_element(By.CSS_SELECTOR, "input.anim-slider")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", animation)
        animation.find_element(By.CSS_SELECTOR, "button[title='Pause']").click()
        first = (image.get_attribute("src"), slider.get_attribute("value"))
        animation.find_element(By.CSS_SELECTOR, "button[title='Play']").click()
        if not _eventually(lambda: (image.get_attribute("src"), slider.get_attribute("value")) != first) \
                or image.get_attribute("src") == first[0]:
            problems.append(f"animation {i + 1} did not change its frame within 5 s of pressing play")
        animation.find_element(By.CSS_SELECTOR, "button[title='Pause']").click()
    return problems


def _animation_calls(site: str, page: str) -> int:
    """How many code cells of the chapter's source (served in _sources/) call explore or animate."""
    with urllib.request.urlopen(f"{site}_sources/{page.removesuffix('.html')}.md", timeout=10) as response:
        notebook = jupytext.reads(response.read().decode(), fmt="md:myst")
    return sum(bool(ANIMATION_CALL.search(c.source)) for c in notebook.cells if c.cell_type == "code")


def _check_solutions(driver) -> tuple[int, list[str]]:
    """Every folded solution (a dropdown admonition titled Solution, or a hidden solution cell) is
    closed at first and opens when clicked. Return how many there are and the failures."""
    problems = []
    prose = [a for a in driver.find_elements(By.CSS_SELECTOR, "div.admonition")
             if a.find_element(By.CSS_SELECTOR, ".admonition-title").text.strip().startswith(("Solution", "Answer"))]
    for i, admonition in enumerate(prose):
        body = [e for e in admonition.find_elements(By.XPATH, "./*")
                if "admonition-title" not in e.get_attribute("class")]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", admonition)
        if "dropdown" not in admonition.get_attribute("class").split() or any(e.is_displayed() for e in body):
            problems.append(f"solution {i + 1} is not folded (write it as an admonition with :class: dropdown)")
            continue
        admonition.find_element(By.CSS_SELECTOR, ".admonition-title").click()
        if not body or not _eventually(lambda: all(e.is_displayed() for e in body)):
            problems.append(f"solution {i + 1} did not open when its title was clicked")
    cells = driver.find_elements(By.CSS_SELECTOR, "div.cell.tag_solution details")
    for i, details in enumerate(cells):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", details)
        source = details.find_element(By.CSS_SELECTOR, ".cell_input")
        if details.get_attribute("open") is not None or source.is_displayed():
            problems.append(f"solution cell {i + 1} is not folded")
        details.find_element(By.TAG_NAME, "summary").click()
        if not _eventually(source.is_displayed):
            problems.append(f"solution cell {i + 1} did not open when clicked")
    return len(prose) + len(cells), problems


def test_the_book_is_built():
    assert PAGES, f"no built book at {HTML}: run `make book` first (or set VQLIB_BOOK_HTML)"


def _math_problems(driver) -> list[str]:
    problems = [f"MathJax error: {e.get_attribute('data-mjx-error') or e.text}"
                for e in driver.find_elements(By.CSS_SELECTOR, "mjx-merror, [data-mjx-error]")]
    problems += [f"math not typeset: {e.text[:80]!r}" for e in driver.find_elements(By.CSS_SELECTOR, ".math")
                 if not e.find_elements(By.TAG_NAME, "mjx-container")]
    # MathJax shows an unknown macro as red text (its noundefined package), not as an error
    undefined = driver.execute_script("return Array.from(document.querySelectorAll('mjx-container'), "
                                      "m => m.textContent).filter(t => t.includes('\\\\'))")
    problems += [f"undefined TeX macro in: {t[:80]!r}" for t in undefined]
    text = driver.execute_script(VISIBLE_TEXT_JS)
    return problems + [f"raw TeX in the text: {m.group(0)[:80]!r}" for m in RAW_TEX.finditer(text)]


def _link_problems(driver, site: str) -> list[str]:
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    internal = sorted({urldefrag(h).url for h in hrefs if h.startswith(site)})
    return [f"broken link: {url.removeprefix(site)} ({_status(url)})" for url in internal if _status(url) >= 400]


def _chapter_problems(driver, site: str, page: str, n_solutions: int) -> list[str]:
    """A chapter renders every animation it makes, folds its solutions, and offers its downloads."""
    problems = []
    expected, found = _animation_calls(site, page), len(driver.find_elements(By.CSS_SELECTOR, "div.animation"))
    if found < expected:
        problems.append(f"{expected} code cells call explore/animate but the page has {found} animations")
    if driver.find_elements(By.XPATH, "//h2[contains(., 'Exercises')]") and not n_solutions:
        problems.append("the Exercises section has no folded solutions")
    return problems + _check_downloads(driver, site, page)


@pytest.mark.parametrize("page", PAGES)
def test_page(page, site, browser):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(site + page)
    problems = [why] if (why := _wait_for_math(browser)) else []
    SHOTS.mkdir(parents=True, exist_ok=True)
    _screenshot(browser, page)  # before any click: the page as a reader first sees it
    problems += _math_problems(browser)
    problems += [f"broken image: {src}" for src in _broken_images(browser)]
    problems += _link_problems(browser, site)
    problems += _check_animations(browser)
    n_solutions, solution_problems = _check_solutions(browser)
    problems += solution_problems
    if page.startswith("chapters/"):
        problems += _chapter_problems(browser, site, page, n_solutions)
    # last, so that errors raised by the clicks above are caught too; Chromium asks for
    # /favicon.ico by itself, no page links it
    problems += [f"console: {e['message'][:300]}" for e in browser.get_log("browser")
                 if e["level"] == "SEVERE" and "/favicon.ico " not in e["message"]]
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


def _check_downloads(driver, site: str, page: str) -> list[str]:
    """A chapter page offers itself as .ipynb (starting with the setup cell) and as .md."""
    links = driver.execute_script(
        "return Array.from(document.querySelectorAll('.dropdown-download-buttons a[href]'), a => a.href)")
    stem = page.removesuffix(".html")
    problems = [f"no {suffix} in the download menu" for suffix in (".ipynb", ".md")
                if not any(urldefrag(h).url == f"{site}_sources/{stem}{suffix}" for h in links)]
    if not problems:
        with urllib.request.urlopen(f"{site}_sources/{stem}.ipynb", timeout=10) as response:
            notebook = json.load(response)
        if "setup" not in notebook["cells"][0].get("metadata", {}).get("tags", []):
            problems.append("the downloadable notebook does not start with the setup cell")
    return problems
