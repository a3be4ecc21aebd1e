"""Serve MathJax from the built site so that math renders offline; drop duplicate scripts.

MathJax 3.2.2 comes from the ``django-static-mathjax`` package (installed with the ``book``
extra). Its ``es5`` bundle is copied to ``_static/mathjax`` and Sphinx is pointed at it
instead of a CDN.
"""

import shutil
from importlib.util import find_spec
from pathlib import Path


def _mathjax_source() -> Path:
    spec = find_spec("mathjax")
    if spec is None or spec.origin is None:
        raise RuntimeError("MathJax not found: install the book extra (pip install -e '.[book]')")
    source = Path(spec.origin).parent / "static" / "mathjax" / "es5"
    if not (source / "tex-chtml.js").is_file():
        raise RuntimeError(f"MathJax bundle not found at {source}")
    return source


def _use_local_mathjax(app, config):
    config.mathjax_path = "mathjax/tex-chtml.js"  # relative: served from _static


def _copy_mathjax(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copytree(_mathjax_source(), Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """sphinx-thebe 0.3 (always loaded by Jupyter Book) registers its inline configuration
    script twice under Sphinx 7, which redeclares a ``const`` and raises a JavaScript error
    on every page. Keep the first copy of each script."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the copies differ only in filename: None for one, "" for the other
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # in place: handlers that run later (sphinx.ext.mathjax) append to this same list
    context["script_files"][:] = unique


def setup(app):
    _mathjax_source()  # fail early, with a clear message
    app.connect("config-inited", _use_local_mathjax, priority=900)
    app.connect("build-finished", _copy_mathjax)
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

