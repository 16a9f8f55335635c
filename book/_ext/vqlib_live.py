"""The runtime of the book's live figures (``vqlib.book.live``): ONNX Runtime Web, vendored at build time.

The figures run the chapters' trained models (ONNX graphs inside each page) in the reader's
browser with ONNX Runtime Web. This extension fetches its npm package once (pinned version,
checked against the SHA-1 the npm registry publishes, cached by ``vqlib.core.download.fetch``)
and writes into ``_static/live/ort/`` only what a page needs:

- ``ort.wasm.min.js``: the runtime's JavaScript (the WebAssembly CPU backend only);
- ``ort-pack.js``: its WebAssembly binary, gzipped and base64-encoded, and its loader module, both
  in one classic script. Chromium forbids ``fetch()`` and module imports on pages opened from
  ``file://``, so the figures would die there; a classic script loads anywhere, and the page
  unpacks the binary with the browser's own DecompressionStream.
- ``LICENSE.txt``: the package's MIT licence.

Every page loads ``_static/live/vqlive.js`` (the figures' one script, a few kB, idle on pages
without a figure) and ``vqlive.css``; a page with a figure also lists the runtime's two scripts,
so that they download while the page is parsed. A build without network access that has no cached copy
fails with the download's message, which says where to put the file.
"""

from __future__ import annotations

import base64
import gzip
import json
import tarfile
from pathlib import Path

ORT_WEB = "1.31.1"
ORT_WEB_URL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB}.tgz"
ORT_WEB_SHA1 = "309e196c733e90a038e0380867dde308a994de92"  # the registry's dist.shasum of that tarball
FILES = {"runtime": "package/dist/ort.wasm.min.js", "wasm": "package/dist/ort-wasm-simd-threaded.wasm",
         "loader": "package/dist/ort-wasm-simd-threaded.mjs"}
LICENSE = f"""onnxruntime-web {ORT_WEB} (https://www.npmjs.com/package/onnxruntime-web), MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def vendor_ort(target: Path) -> None:
    """Write the runtime's files (see the module docstring) into ``target``, once per version."""
    stamp = target / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == ORT_WEB:
        return
    from vqlib.core.download import fetch

    with tarfile.open(fetch(ORT_WEB_URL, ORT_WEB_SHA1, folder="npm")) as tar:
        files = {name: tar.extractfile(path).read() for name, path in FILES.items()}
    target.mkdir(parents=True, exist_ok=True)
    (target / "ort.wasm.min.js").write_bytes(files["runtime"])
    pack = {"wasm": base64.b64encode(gzip.compress(files["wasm"], 9, mtime=0)).decode("ascii"),
            "loader": files["loader"].decode("utf-8")}
    (target / "ort-pack.js").write_text(f"window.VQLIVE_ORT_PACK = {json.dumps(pack)};\n")
    (target / "LICENSE.txt").write_text(LICENSE)
    stamp.write_text(ORT_WEB + "\n")


def _vendor(app) -> None:
    if app.builder.format == "html":
        vendor_ort(Path(app.outdir, "_static", "live", "ort"))


def _runtime_on_figure_pages(app, pagename, templatename, context, doctree) -> None:
    """A page with a live figure lists the runtime's scripts before vqlive.js, deferred, so that the
    browser fetches them while it parses the page instead of after."""
    if 'class="vq-live"' in context.get("body", ""):
        for script in ("live/ort/ort.wasm.min.js", "live/ort/ort-pack.js"):
            app.add_js_file(script, priority=400, loading_method="defer")  # this page only (html-page-context)


def setup(app):
    app.connect("builder-inited", _vendor)
    app.connect("html-page-context", _runtime_on_figure_pages)
    app.add_js_file("live/vqlive.js", loading_method="defer")
    app.add_css_file("live/vqlive.css")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
