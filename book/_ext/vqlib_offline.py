"""Pages that work offline and load without console errors (tests/browser/test_pages.py checks both).

- **MathJax from the book itself.** Sphinx loads MathJax 3 from a CDN, so a reader without
  internet (a classroom, a train, a CI machine) sees raw TeX. The book depends on
  ``django-static-mathjax``, a plain copy of MathJax 3.2.2 (the version the CDN serves for
  ``mathjax@3``) importable as ``mathjax``; this extension copies the parts a page can load into
  ``_static/mathjax/`` and points ``mathjax_path`` there. Without the package, or with
  ``mathjax_path`` set in ``_config.yml``, Sphinx's setting stands.
- **No icon font from a CDN.** matplotlib's JavaScript animations (``to_jshtml``) link
  FontAwesome 4 from a CDN for their buttons; the theme ships FontAwesome, whose ``fa fa-play``
  classes draw the same icons, so each page drops that link.
- **No script twice.** Sphinx 7.4 lists an inline script that an extension registers after the
  builder starts twice (once as file name ``None``, once as ``""``): sphinx-thebe's
  ``const THEBE_JS_URL`` is then declared twice and every page logs a SyntaxError. Each page's
  script list is de-duplicated.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# what a page may load: the combined component, its lazily loaded TeX extensions and fonts,
# the menu, and the accessibility tools the menu can switch on
MATHJAX_COMPONENT = "tex-mml-chtml.js"
MATHJAX_PARTS = ("input", "output/chtml.js", "output/chtml", "ui", "a11y", "sre", "adaptors")


def _mathjax_source() -> Path | None:
    try:
        import mathjax  # django-static-mathjax
    except ImportError:
        return None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    return es5 if (es5 / MATHJAX_COMPONENT).is_file() else None


def _use_local_mathjax(app, config) -> None:
    from sphinx.ext.mathjax import MATHJAX_URL

    if config.mathjax_path == MATHJAX_URL and _mathjax_source() is not None:
        config.mathjax_path = f"mathjax/{MATHJAX_COMPONENT}"  # relative to _static


def _copy_mathjax(app) -> None:
    source = _mathjax_source()
    if app.builder.format != "html" or source is None or app.config.mathjax_path != f"mathjax/{MATHJAX_COMPONENT}":
        return
    target = Path(app.outdir, "_static", "mathjax")
    if (target / MATHJAX_COMPONENT).is_file():  # copied by an earlier build: the package does not change
        return
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_COMPONENT, target)
    for part in MATHJAX_PARTS:
        (target / part).parent.mkdir(parents=True, exist_ok=True)
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            shutil.copy2(source / part, target / part)


CDN_ICON_FONT = re.compile(r'<link[^>]*href="https://maxcdn\.bootstrapcdn\.com/font-awesome/[^"]*"[^>]*>\n?')


def _drop_cdn_icon_font(app, pagename, templatename, context, doctree) -> None:
    if "body" in context:
        context["body"] = CDN_ICON_FONT.sub("", context["body"])


def _deduplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, scripts = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts  # a new list: the builder's own is restored after each page


def setup(app):
    app.connect("config-inited", _use_local_mathjax)
    app.connect("builder-inited", _copy_mathjax)
    app.connect("html-page-context", _drop_cdn_icon_font)
    app.connect("html-page-context", _deduplicate_scripts, priority=900)  # after every extension added its own
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
