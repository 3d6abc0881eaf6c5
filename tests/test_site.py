"""The course's static site (python -m course_lib.site), built into a temporary folder and read in headless Chromium.

The site is served by a `http.server` on 127.0.0.1 (a free port, in a thread) that records every request's status.
Every page is opened, and on each:

  (a) every <img> has loaded (naturalWidth > 0);
  (b) every internal link (a relative <a href>, an anchor) names a file of the site, and its #fragment an id there;
  (c) no output shows a traceback, an error, a stale progress bar ("0%|") or an unrendered widget ("interactive(...)");
  (d) MathJax typeset every formula of a page with math (nothing left between $$, no MathJax error);
  (e) the browser asked nothing of any other machine (Chrome's performance log) and the server answered nothing
      with an error (a missing MathJax part, a font, a stylesheet).

The landing page must link every notebook's page and exercise version and LICENSE, and show README's results; one
page and the landing page are opened again from file://. A page with a CDN script must trip the same network check.
The unit tests (widget outputs, link rewriting, the static network check, errors) need no browser."""
import functools
import html
import http.server
import re
import threading
import time
import urllib.parse
from pathlib import Path

import nbformat
import pytest

import browser
from course_lib import site
from course_lib.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
_, ARC = site.arc_table(README)
STEMS = [Path(rel).stem for _, _, rel in ARC]
MATHJAX_TIMEOUT = 60  # seconds for MathJax to finish a page


# --- unit tests: pure functions, no browser -------------------------------------------------------------------------

def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def _widget_cell(extra=None):
    cell = nbformat.v4.new_code_cell("widgets.interactive(f, x=(0, 3))")
    data = {site.WIDGET_MIME: {"model_id": "abc", "version_major": 2}, "text/plain": "interactive(children=(...))"}
    cell.outputs = [nbformat.v4.new_output("display_data", data={**data, **(extra or {})})]
    return cell


def test_widget_output_becomes_a_note_naming_the_static_figure():
    nb = _nb(_widget_cell(), nbformat.v4.new_code_cell("# Static fallback: every head at once\nplot()"))
    assert site.replace_widget_outputs(nb) == 1
    data = nb.cells[0].outputs[0]["data"]
    assert list(data) == ["text/html"] and "widgets" not in nb.metadata
    assert "open the notebook in JupyterLab" in data["text/html"] and "every head at once" in data["text/html"]


def test_widget_output_keeps_its_saved_image():
    nb = _nb(_widget_cell({"image/png": "iVBORw0KGgo="}))
    site.replace_widget_outputs(nb)
    assert nb.cells[0].outputs[0]["data"] == {"image/png": "iVBORw0KGgo="}


def test_links_to_notebooks_go_to_their_pages_and_repo_files_become_text():
    site_map = {"notebooks/02_b.ipynb": "02_b.html", "notebooks/learner/02_b.ipynb": "learner/02_b.html",
                "LICENSE": "LICENSE.txt"}
    html = ('<a href="02_b.ipynb#the-cache">next</a> <a href="#top">up</a> <a href="https://arxiv.org/abs/1">paper</a>'
            ' <a href="../course_lib/attention.py">the code</a> <a href="../LICENSE">licence</a>')
    out = site.rewrite_links(html, "notebooks", "", site_map)
    assert '<a href="02_b.html#the-cache">next</a>' in out
    assert '<a href="#top">up</a>' in out and '<a href="https://arxiv.org/abs/1">paper</a>' in out
    assert '<span class="site-repo-link" title="course_lib/attention.py in the course repository">the code</span>' in out
    assert '<a href="LICENSE.txt">licence</a>' in out
    # from a learner's page: a sibling notebook is the sibling exercise page, the solutions are one folder up
    out = site.rewrite_links('<a href="02_b.ipynb">x</a> <a href="../02_b.ipynb">y</a>', "notebooks/learner", "learner",
                             site_map)
    assert '<a href="02_b.html">x</a>' in out and '<a href="../02_b.html">y</a>' in out


def test_static_network_check_flags_what_a_page_would_load():
    page = ('<script src="https://cdn.jsdelivr.net/npm/x.js"></script><link rel="stylesheet" href="//fonts.example/a.css">'
            '<style>@import "https://fonts.googleapis.com/css"; p {background: url(data:image/png;base64,AA)}</style>'
            '<img src="data:image/png;base64,AA"><script src="_static/mathjax/MathJax.js"></script>'
            '<a href="https://example.org/">a link is not a load</a>')
    assert site.off_machine_refs(page) == ["//fonts.example/a.css", "https://cdn.jsdelivr.net/npm/x.js",
                                           "https://fonts.googleapis.com/css"]


def test_readme_sections_are_found():
    assert len(ARC) >= 10 and STEMS[0].startswith("01_")
    rows = [line for line in site.results_block(README).splitlines() if line.startswith("| ")]
    assert len(rows) > 10


def test_a_notebook_listed_but_missing_is_named(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# C\n\n## The arc\n\n| # | notebook | what |\n|---|---|---|\n"
                      "| 07 | [gone](notebooks/07_gone.ipynb) | x |\n\n## Headline results\n\n"
                      "<!-- results:start -->\n| a | b |\n|---|---|\n<!-- results:end -->\n", encoding="utf-8")
    (tmp_path / "notebooks").mkdir()
    with pytest.raises(site.SiteError, match=r"notebook 07 \(gone\).*07_gone\.ipynb"):
        site.build_site(tmp_path / "site", readme=readme, notebooks_dir=tmp_path / "notebooks")
    assert not (tmp_path / "site").exists()


def test_a_folder_it_did_not_write_is_not_emptied(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(site.SiteError, match="not written by course_lib.site"):
        site.build_site(tmp_path)
    assert (tmp_path / "keep.txt").exists()


# --- the built site, in a browser -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    t0 = time.perf_counter()
    index = site.build_site(out, log=lambda *a, **k: None)
    print(f"\nsite built in {time.perf_counter() - t0:.1f} s")
    return index.parent


class _Recording(http.server.SimpleHTTPRequestHandler):
    statuses = []

    def log_request(self, code="-", size="-"):
        self.statuses.append((self.path, int(getattr(code, "value", code))))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(built):
    statuses = []
    handler = type("Handler", (_Recording,), {"statuses": statuses})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", browser.free_port()),
                                            functools.partial(handler, directory=str(built)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", statuses
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def driver():
    browser.skip_or_fail()
    d = browser.chrome()
    d.set_script_timeout(MATHJAX_TIMEOUT)
    yield d
    d.quit()


_IDS = {}


def _ids(path):
    """The ids (and <a name>s) a page's HTML defines, for its #fragments."""
    if path not in _IDS:
        found = re.findall(r"""\b(?:id|name)=(?:"([^"]*)"|'([^']*)')""", path.read_text(encoding="utf-8"))
        _IDS[path] = {html.unescape(a or b) for a, b in found}
    return _IDS[path]


def _site_file(root, base, url):
    """The file of the site an absolute URL names (base: the site's URL), or None when it is not under the site."""
    if not url.startswith(base):
        return None
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    rel = path[len(urllib.parse.urlparse(base).path):]
    target = root / rel
    return target / "index.html" if rel.endswith("/") or not rel else target


INSPECT = """
const out = document.querySelectorAll('.jp-OutputArea-output');
return {
  images: Array.from(document.images).map(i => [i.currentSrc.slice(0, 80), i.complete, i.naturalWidth]),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href]),
  text: document.body.innerText,
  stderr: Array.from(document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]'))
               .map(e => e.innerText),
  markdown: Array.from(document.querySelectorAll('.jp-MarkdownOutput')).map(e => e.innerText).join('\\n'),
  outputs: out.length,
  nav: Array.from(document.querySelectorAll('nav.site-nav a[rel=next]')).map(a => a.getAttribute('href')),
};
"""
WAIT_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.Hub) { done(null); return; }
MathJax.Hub.Register.StartupHook('End', () => done({
  typeset: document.querySelectorAll('.MathJax, .MathJax_Display').length,
  errors: document.querySelectorAll('.MathJax_Error, .merror, #MathJax_FontWarning').length}));
"""


def inspect_page(driver, url, root, base, math):
    """Open one page and return the problems found on it (a list of strings; empty when it is right)."""
    problems = []
    driver.get(url)
    mj = driver.execute_async_script(WAIT_MATHJAX)
    page = driver.execute_script(INSPECT)
    name = url[len(base):] if url.startswith(base) else url
    for src, complete, width in page["images"]:
        if not (complete and width > 0):
            problems.append(f"{name}: image not loaded: {src}")
    for raw, absolute in page["links"]:
        if raw.startswith(("http://", "https://", "mailto:")) and not absolute.startswith(base):
            continue  # a link off the site: a reader may follow it, the page never loads it
        target = _site_file(root, base, absolute)
        if target is None or not target.is_file():
            problems.append(f"{name}: link {raw!r} names no file of the site")
            continue
        fragment = urllib.parse.urlparse(absolute).fragment
        # a browser matches the fragment as written, then percent-decoded (nbconvert's heading ids are percent-encoded)
        if fragment and not {fragment, urllib.parse.unquote(fragment)} & _ids(target):
            problems.append(f"{name}: link {raw!r}: no id {fragment!r} in {target.name}")
    text = page["text"]
    for bad, why in (("Traceback (most recent call last)", "a traceback"), ("interactive(children=", "a raw widget"),
                     (site.WIDGET_MIME, "a widget's mime type")):
        if bad in text:
            problems.append(f"{name}: shows {why}")
    if re.search(r"(?<!\d)0%\|", text):
        problems.append(f"{name}: shows a stale progress bar (0%|)")
    for err in page["stderr"]:
        if re.search(r"^\w*(Error|Exception)\b", err, re.M):
            problems.append(f"{name}: an error output: {err[:120]!r}")
    if math:
        if not mj or not mj["typeset"]:
            problems.append(f"{name}: has math but MathJax typeset nothing ({mj})")
        elif mj["errors"]:
            problems.append(f"{name}: {mj['errors']} MathJax error(s)")
        if "$$" in page["markdown"]:
            problems.append(f"{name}: a $$ formula left untypeset")
    return problems, page, mj


def _pages(root):
    return ["index.html"] + [f"{stem}.html" for stem in STEMS] + [f"learner/{stem}.html" for stem in STEMS]


def _has_math(root, rel):
    return "MathJax.js" in (root / rel).read_text(encoding="utf-8")


def test_every_page_in_the_browser(built, server, driver):
    base, statuses = server
    root = built
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")) == sorted(_pages(root))
    browser.requests_made(driver)  # start the log here
    problems, typeset, off = [], {}, []
    t0 = time.perf_counter()
    for rel in _pages(root):
        found, page, mj = inspect_page(driver, base + rel, root, base, _has_math(root, rel))
        problems += found
        off += browser.off_machine(browser.requests_made(driver))
        if mj:
            typeset[rel] = mj["typeset"]
        if rel != "index.html":
            assert page["outputs"] > 0, f"{rel}: no outputs rendered"
            i = STEMS.index(Path(rel).stem)
            want = [f"{STEMS[i + 1]}.html"] * 2 if i + 1 < len(STEMS) else []
            assert page["nav"] == want, f"{rel}: its 'next' links {page['nav']}, want {want}"
    print(f"{len(_pages(root))} pages in {time.perf_counter() - t0:.1f} s; formulas typeset: {typeset}")
    assert not problems, "\n".join(problems)
    assert not off, f"requests that left the machine: {off}"
    errors = [(path, code) for path, code in statuses if code >= 400]
    assert not errors, f"the site's server answered with errors: {errors}"
    # the pages with math: 01 is one, and each typeset its formulas
    assert typeset.get(f"{STEMS[0]}.html", 0) > 0 and typeset.get(f"learner/{STEMS[0]}.html", 0) > 0


def test_landing_page_links_everything_and_shows_readme(built, server, driver):
    base, _ = server
    driver.get(base + "index.html")
    hrefs = set(driver.execute_script("return Array.from(document.querySelectorAll('a[href]'))"
                                      ".map(a => a.getAttribute('href'))"))
    for stem in STEMS:
        assert f"{stem}.html" in hrefs and f"learner/{stem}.html" in hrefs, stem
    assert "LICENSE.txt" in hrefs
    licence = (built / "LICENSE.txt").read_text(encoding="utf-8")
    assert "MIT License" in licence and "CC BY 4.0" in licence
    text = driver.execute_script("return document.body.innerText")
    assert "MIT License" in text and "CC BY 4.0" in text
    for line in site.results_block(README).splitlines()[2:]:  # every headline result, as README states it
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] in text and cells[2] in text, line
    for number, title, _ in ARC:
        assert title in text, title


def test_pages_work_from_file_urls(built, driver):
    browser.requests_made(driver)
    problems = []
    for rel in ("index.html", f"{STEMS[0]}.html", f"learner/{STEMS[0]}.html"):
        url = (built / rel).as_uri()
        found, _, mj = inspect_page(driver, url, built, built.as_uri() + "/", _has_math(built, rel))
        problems += found
        if rel != "index.html":
            assert mj and mj["typeset"] > 0, f"{rel} from file://: MathJax typeset nothing"
    assert not problems, "\n".join(problems)
    assert not browser.off_machine(browser.requests_made(driver))


def test_network_check_catches_a_cdn_script(tmp_path, driver):
    page = tmp_path / "cdn.html"
    page.write_text('<!DOCTYPE html><html><head><script src="https://cdn.jsdelivr.net/npm/require@2/r.js"></script>'
                    '</head><body><img src="http://example.invalid/a.png"></body></html>', encoding="utf-8")
    browser.requests_made(driver)
    driver.get(page.as_uri())
    off = browser.off_machine(browser.requests_made(driver))
    assert "https://cdn.jsdelivr.net/npm/require@2/r.js" in off and "http://example.invalid/a.png" in off
    assert site.off_machine_refs(page.read_text()) == ["http://example.invalid/a.png",
                                                       "https://cdn.jsdelivr.net/npm/require@2/r.js"]


def test_page_checks_catch_a_broken_page(tmp_path, driver):
    """The checks above are not vacuous: a page with a dead link, a missing anchor, a broken image, a traceback, a
    stale progress bar and formulas MathJax never saw is flagged for each."""
    (tmp_path / "other.html").write_text('<p id="here">x</p>', encoding="utf-8")
    (tmp_path / "bad.html").write_text(
        '<!DOCTYPE html><html><body><a href="gone.html">dead</a> <a href="other.html#nowhere">anchor</a>'
        '<a href="other.html#here">fine</a><img src="missing.png">'
        '<div class="jp-MarkdownOutput">$$x^2$$</div>'
        '<pre>Traceback (most recent call last):\n  File "x"</pre><pre>train:   0%|          | 0/10</pre>'
        '</body></html>', encoding="utf-8")
    problems, _, _ = inspect_page(driver, (tmp_path / "bad.html").as_uri(), tmp_path, tmp_path.as_uri() + "/", True)
    text = "\n".join(problems)
    for expected in ("'gone.html' names no file", "no id 'nowhere'", "image not loaded", "shows a traceback",
                     "stale progress bar", "MathJax typeset nothing", "$$ formula left untypeset"):
        assert expected in text, (expected, problems)
    assert len(problems) == 7, problems
