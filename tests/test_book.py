"""The book as a whole: every chapter under papermill with another seed, the website built
from those executed copies with warnings as errors, and the built site checked in headless
Chromium with the network blocked.

(`pytest --nbval-lax chapters/`, in the same test command, executes the notebooks as
committed, with SEED = 0.) New chapters are picked up from chapters/*.ipynb and _toc.yml;
nothing here lists them.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "_ext"))
from repository_buttons import _origin, public_repository  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = public_repository(_origin(ROOT))  # None: the buttons are hidden
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
OTHER_SEED = 1
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.book


def toc_files(entry=None) -> list[str]:
    """Every document named in _toc.yml, in reading order."""
    if entry is None:
        entry = yaml.safe_load((ROOT / "_toc.yml").read_text())
        return [entry["root"], *toc_files({k: v for k, v in entry.items() if k != "root"})]
    files = []
    if isinstance(entry, dict):
        if "file" in entry:
            files.append(entry["file"])
        for key in ("parts", "chapters", "sections"):
            for child in entry.get(key, []):
                files += toc_files(child)
    return files


def has_parameters_cell(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text())["cells"]
    return any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)


@pytest.fixture(scope="session")
def book_copy(tmp_path_factory) -> Path:
    """A copy of the book's sources whose notebooks are replaced by executed ones."""
    copy = tmp_path_factory.mktemp("book")
    for name in ("_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "_ext", copy / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "chapters", copy / "chapters", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # papermill below has executed them
    (copy / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


@functools.lru_cache(maxsize=None)
def run_papermill(notebook: Path, output: Path) -> str | None:
    """Execute a chapter with SEED = OTHER_SEED; return the error text, or None."""
    import papermill

    parameters = {"SEED": OTHER_SEED} if has_parameters_cell(notebook) else {}
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(notebook.parent),
                                   kernel_name="python3", progress_bar=False)
    except Exception as error:  # noqa: BLE001 - reported by the test that asked for it
        return f"{type(error).__name__}: {error}"
    return None


def test_every_chapter_is_in_the_table_of_contents():
    listed = set(toc_files())
    missing = [nb.name for nb in CHAPTERS if f"chapters/{nb.stem}" not in listed]
    assert not missing, f"add these notebooks to _toc.yml: {missing}"
    for doc in listed:
        assert any((ROOT / f"{doc}{ext}").exists() for ext in (".ipynb", ".md")), f"_toc.yml names missing file {doc}"


def test_chapters_are_stored_without_outputs():
    for nb in CHAPTERS:
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"strip outputs of {nb.name}"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[nb.stem for nb in CHAPTERS])
def test_chapter_runs_with_another_seed(notebook, book_copy):
    error = run_papermill(notebook, book_copy / "chapters" / notebook.name)
    assert error is None, f"{notebook.name} with SEED={OTHER_SEED}: {error}"


@pytest.fixture(scope="session")
def website(book_copy) -> Path:
    for nb in CHAPTERS:  # cached: normally already done by the tests above
        if run_papermill(nb, book_copy / "chapters" / nb.name) is not None:
            pytest.fail(f"cannot build the website: {nb.name} failed under papermill")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_copy), "--builder", "html",
         "-W", "-n", "--keep-going"],
        capture_output=True, text=True, env={**os.environ, "NORMBOOK_REPOSITORY": REPOSITORY or ""},
    )
    warnings = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
                if "WARNING" in line and "TCP without encryption" not in line]
    assert result.returncode == 0 and not warnings, "website build failed:\n" + "\n".join(
        warnings or result.stdout.splitlines()[-30:])
    return book_copy / "_build" / "html"


def test_website_builds_without_warnings(website):
    assert (website / "index.html").is_file()
    assert (website / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not served from the site"


@pytest.fixture(scope="session")
def server(website):
    handler = functools.partial(QuietHandler, directory=str(website))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the website check (`make test` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield instance
        instance.close()


def image_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {})
               for c in cells if c["cell_type"] == "code" for out in c.get("outputs", []))


@pytest.mark.parametrize("doc", toc_files())
def test_page_in_browser(doc, website, server, browser, book_copy):
    """The page loads from the local server alone, its math is typeset by the local
    MathJax, its Markdown tables are rendered, its images (at least one per figure the
    notebook produced) are displayed, and every internal link points at an existing page
    and anchor."""
    context = browser.new_context()
    blocked, failed, errors = [], [], []

    def route(r):
        if r.request.url.startswith(server):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda resp: failed.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None)
    response = page.goto(server + doc + ".html", wait_until="networkidle")
    assert response is not None and response.ok, f"{doc}: HTTP {response and response.status}"

    math_count = page.locator(".math").count()
    if math_count:
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
        page.evaluate("MathJax.startup.promise")
        untypeset = page.evaluate("Array.from(document.querySelectorAll('.math')).filter("
                                  "e => !e.querySelector('mjx-container') && e.tagName !== 'MJX-CONTAINER').length")
        tex_errors = page.locator("mjx-merror").count()
        assert untypeset == 0 and tex_errors == 0, f"{doc}: {untypeset} math elements not typeset, {tex_errors} TeX errors"

    # an unrendered Markdown table ends up as a paragraph of pipes (code cells may contain them)
    raw_tables = page.evaluate("Array.from(document.querySelectorAll('main p')).filter(p => p.innerText.includes('|---|')).length")
    assert raw_tables == 0, f"{doc}: {raw_tables} Markdown tables shown as raw text"

    broken_images = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                                  ".map(i => i.src)")
    assert not broken_images, f"{doc}: images not displayed: {broken_images}"
    executed = book_copy / f"{doc}.ipynb"
    if executed.exists():
        figures = image_outputs(executed)
        shown = page.locator("img").count()
        assert shown >= figures, f"{doc}: the notebook made {figures} figures, the page shows {shown} images"

    # repository, issue and launch buttons lead to this book's public repository, or are absent
    buttons = page.evaluate("Array.from(document.querySelectorAll('.article-header-buttons a[href]'))"
                            ".map(a => a.href)")
    elsewhere = [b for b in buttons if not b.startswith(server) and not b.startswith("javascript")
                 and (REPOSITORY is None or urlparse(REPOSITORY).path not in b)]
    assert not elsewhere, f"{doc}: header buttons point away from the book's repository: {elsewhere}"

    links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    broken_links = [link for link in links if link.startswith(server) and not link_target_exists(website, server, link)]
    page.screenshot(path=str(website.parent / f"screenshot-{doc.replace('/', '_')}.png"), full_page=False)
    context.close()
    assert not broken_links, f"{doc}: broken internal links: {broken_links}"
    assert not failed, f"{doc}: failed requests: {failed}"
    assert not errors, f"{doc}: JavaScript errors: {errors}"
    assert not blocked, f"{doc}: the page tried to reach the network: {blocked}"


@functools.lru_cache(maxsize=None)
def ids_in(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def link_target_exists(website: Path, server: str, link: str) -> bool:
    url, fragment = urldefrag(link)
    relative = unquote(urlparse(url).path).lstrip("/")
    target = website / relative
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return False
    return not fragment or target.suffix != ".html" or unquote(fragment) in ids_in(target)


def test_link_checker_detects_broken_links(website, server):
    """The link check above can fail: a missing page and a missing anchor are caught."""
    assert link_target_exists(website, server, urljoin(server, "chapters/bibliography.html"))
    assert not link_target_exists(website, server, urljoin(server, "chapters/no-such-page.html"))
    assert not link_target_exists(website, server, urljoin(server, "chapters/bibliography.html#no-such-anchor"))
