"""What the browser tests share: the built book on a local server, and headless Chromium."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from book_site import HTML, SHOTS, chromium


@pytest.fixture(autouse=True, scope="session")
def _private_cache():
    """Not a private cache here (tests/conftest.py gives every other test one): the browser tests
    compare the built book's figures with the models the book build trained, so they read the
    model cache that build used (``$VQLIB_CACHE``, default ``~/.cache/vqlib``)."""
    yield


@pytest.fixture(autouse=True, scope="session")
def _fresh_screenshots():
    """Screenshots of this run only: the folder is emptied once, before the first browser test."""
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> str:
    """The built book served over http://127.0.0.1 on a free port (a local server thread)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium (``chromium``), one per test module."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()
