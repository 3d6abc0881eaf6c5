"""python -m course_lib.site [--out DIR]: the course as a static website, built offline.

Writes into DIR (default build/site/):

- index.html: the course's arc and headline results, both taken from README.md (its "## The arc" table and the block
  between <!-- results:start --> and <!-- results:end -->, never retyped), a link to every notebook's page and its
  exercise version, and the licence (LICENSE, copied as LICENSE.txt);
- NN_name.html: each notebook rendered with its committed outputs (nothing is re-executed) by nbconvert's HTMLExporter,
  and learner/NN_name.html: its exercise version from notebooks/learner/, each linking to the other, every page with
  home / previous / next in course order;
- _static/: one copy of JupyterLab's CSS and the part of MathJax 2.7 the formulas need (TeX input, HTML-CSS output with
  the STIX-Web fonts), taken from the pinned jupyter-server-mathjax package.

Nothing on the site comes from the network (the build refuses a page that would load anything off the machine), and
every link is relative, so it opens from disk as well as served:

    python -m course_lib.site
    python -m http.server -d build/site --bind 127.0.0.1      # then http://127.0.0.1:8000/
    # or open build/site/index.html in a browser directly

Saved widget outputs cannot work without a kernel: each is replaced by a note pointing at the static fallback the
notebook draws after it (an image the widget cell saved is kept). A link in a notebook to another notebook goes to that
notebook's page; a link to any other file of the repository (not on the site) is kept as plain text.
"""
import argparse
import html
import posixpath
import re
import shutil
import time
import urllib.parse
from pathlib import Path

import jupyter_server_mathjax
import mistune
import nbformat
from nbconvert import HTMLExporter

from .paths import BUILD_DIR, NOTEBOOKS_DIR, REPO_ROOT

TEMPLATE_DIR = Path(__file__).with_name("site_template")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MARKER = ".course-site"  # marks a folder this module wrote, so a rebuild may empty it
# MathJax 2.7 as jupyter-server-mathjax ships it: the combined config holds the TeX input and HTML-CSS output code;
# the HTML-CSS output also needs its STIX-Web font metrics and the fonts themselves, and the MathML element jax its
# operator tables (loaded on demand). About 2.3 MB in all.
MATHJAX_PARTS = ["MathJax.js", "LICENSE", "config/TeX-AMS-MML_HTMLorMML-full.js", "jax/output/HTML-CSS",
                 "fonts/HTML-CSS/STIX-Web/woff", "jax/element"]


class SiteError(Exception):
    """The site cannot be built as asked (a missing notebook, an unreadable README section, a page that loads from
    the network)."""


# --- the README's sections ------------------------------------------------------------------------------------------

def readme_section(text, heading):
    """The body of the README section '## heading', up to the next '## '."""
    m = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        raise SiteError(f"README.md has no '## {heading}' section")
    return m.group(1)


def arc_table(text):
    """The README's arc table as markdown, and its notebooks in course order: [(number, title, repo path)]."""
    table = "\n".join(line for line in readme_section(text, "The arc").splitlines() if line.startswith("|"))
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*\[([^\]]+)\]\(([^)\s]+\.ipynb)\)", table, re.M)
    if not rows:
        raise SiteError("README.md's '## The arc' section has no table of notebook links")
    return table, rows


def results_block(text):
    """The headline results table between the README's results markers."""
    m = re.search(r"<!-- results:start -->\n(.*?)<!-- results:end -->", text, re.S)
    if not m:
        raise SiteError("README.md has no <!-- results:start --> ... <!-- results:end --> block")
    return m.group(1).strip()


def with_learner_column(table, learner_href):
    """The arc table with a last column linking each notebook's exercise version. learner_href: repo path -> href."""
    out = []
    for line in table.splitlines():
        m = re.search(r"\]\(([^)\s]+\.ipynb)\)", line)
        if m:
            line = f"{line.rstrip().rstrip('|')}| [exercises]({learner_href(m.group(1))}) |"
        elif re.match(r"^\|[\s|:-]+\|$", line.strip()):
            line = line.rstrip() + "---|"
        else:
            line = line.rstrip() + " exercise version |"
        out.append(line)
    return "\n".join(out)


# --- notebook contents ----------------------------------------------------------------------------------------------

_FALLBACK = re.compile(r"^\s*#\s*Static (?:fallback|figure)\b(?:,\s*and)?[:,]?\s*(.+)$", re.M | re.I)


def _fallback_caption(cells, index):
    """What the static fallback after a widget cell shows, from its '# Static fallback: ...' comment (in that cell or
    one of the next three code cells), or None."""
    for cell in cells[index:index + 4]:
        m = _FALLBACK.search(cell.source) if cell.cell_type == "code" else None
        if m:
            return m.group(1).strip().rstrip(".")
    return None


def widget_note(caption=None):
    """The HTML put where a saved widget was."""
    after = (f"the static fallback below shows {html.escape(caption)}" if caption
             else "the cells below show what it explores, statically")
    return (f'<div class="site-widget-note"><strong>Interactive widget:</strong> open the notebook in JupyterLab to use '
            f"it; {after}.</div>")


def replace_widget_outputs(nb):
    """Drop every saved widget view (and the notebook's widget state): a static page cannot run it. An output that
    saved an image beside the widget keeps the image; one that saved only the widget becomes a short note. Changes nb
    in place and returns the number of widget outputs replaced."""
    nb.metadata.pop("widgets", None)
    replaced = 0
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME not in data:
                continue
            replaced += 1
            images = {k: v for k, v in data.items() if k.startswith("image/")}
            out["data"] = images or {"text/html": widget_note(_fallback_caption(nb.cells, i))}
            out.get("metadata", {}).pop(WIDGET_MIME, None)
    return replaced


def has_math(nb):
    """Whether any markdown cell holds TeX ($...$, $$...$$, \\(...\\) or \\[...\\])."""
    pattern = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$|\\\(.+?\\\)|\\\[.+?\\\]", re.S)
    return any(c.cell_type == "markdown" and pattern.search(c.source) for c in nb.cells)


# --- links ----------------------------------------------------------------------------------------------------------

_A_TAG = re.compile(r"<a\b([^>]*?)\bhref=(\"|')(.*?)\2([^>]*)>(.*?)</a>", re.S | re.I)


def rewrite_links(page_html, source_dir, page_dir, site_map):
    """Make the <a href> links of rendered markdown work on the site.

    source_dir: the repository folder the markdown came from ('notebooks', '' for the README); page_dir: the site
    folder of the page ('', 'learner'); site_map: {repository path: site path} of every file the site has. Anchors,
    absolute URLs and links to a file in site_map stay (made relative to the page, a '#fragment' kept); a link to
    'xx.ipynb' thus goes to its page. Any other relative link names a repository file that is not on the site: it
    becomes its text, with the path in a tooltip."""
    def fix(m):
        before, quote, href, after, text = m.groups()
        target = html.unescape(href)
        if not target or target.startswith("#") or urllib.parse.urlparse(target).scheme or target.startswith("//"):
            return m.group(0)
        path, _, fragment = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(source_dir, urllib.parse.unquote(path)))
        if repo_path in site_map:
            new = posixpath.relpath(site_map[repo_path], page_dir or ".") + (f"#{fragment}" if fragment else "")
            return f"<a{before}href={quote}{html.escape(new)}{quote}{after}>{text}</a>"
        return f'<span class="site-repo-link" title="{html.escape(repo_path)} in the course repository">{text}</span>'

    return _A_TAG.sub(fix, page_html)


_LOADS = re.compile(r"<(?:script|link|img|iframe|source|video|audio|embed|object)\b[^>]*?\b(?:src|href|data)="
                    r"[\"']?([^\"'\s>]+)|url\(\s*[\"']?([^\"')\s]+)|@import\s+[\"']([^\"']+)", re.I)


def off_machine_refs(page_html):
    """The URLs a page would load from another machine: script/link/img/... sources, CSS url() and @import that are
    absolute (http:, https:, //host). <a> links are not loads and are not listed."""
    refs = (next(g for g in m.groups() if g) for m in _LOADS.finditer(page_html))
    return sorted({r for r in refs if re.match(r"(?i)(https?:)?//", r)})


# --- pages ----------------------------------------------------------------------------------------------------------

def _nav(pages, i, page_dir, other_href, other_label):
    """Home / previous / next (in course order, among the pages of one folder) and the page's other version."""
    up = "../" if page_dir else ""
    home = f'<a class="site-home" href="{up}index.html">Home</a>'
    prev = (f'<a rel="prev" href="{pages[i - 1][0]}.html">← {html.escape(pages[i - 1][1])}</a>' if i > 0
            else '<span class="site-off">← (first)</span>')
    nxt = (f'<a rel="next" href="{pages[i + 1][0]}.html">{html.escape(pages[i + 1][1])} →</a>' if i + 1 < len(pages)
           else '<span class="site-off">(last) →</span>')
    return (f'<nav class="site-nav">{home} <span class="site-sep">·</span> {prev} <span class="site-sep">·</span> '
            f'{nxt} <span class="site-other"><a href="{other_href}">{other_label}</a></span></nav>')


def _footer(up):
    return (f'Code under the MIT License, the notebooks\' prose and figures under CC BY 4.0: see '
            f'<a href="{up}LICENSE.txt">LICENSE</a>.')


def _exporter():
    return HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="site", theme="light",
                        filters={"site_links": lambda body, site: rewrite_links(body, site["source_dir"],
                                                                                  site["page_dir"], site["map"])})


def render_notebook(exporter, path, title, site):
    """One notebook's page (its committed outputs, widgets replaced) as HTML. site: the template's context."""
    nb = nbformat.read(str(path), as_version=4)
    replace_widget_outputs(nb)
    nb.metadata["title"] = title
    body, _ = exporter.from_notebook_node(nb, resources={"site": {**site, "math": has_math(nb)}})
    return body


def _lab_css_dir(exporter):
    for d in exporter.template_paths:
        if (Path(d) / "static" / "index.css").exists() and Path(d).name == "lab":
            return Path(d) / "static"
    raise SiteError("nbconvert's lab template (static/index.css) was not found")


def _copy_static(static, exporter):
    static.mkdir(parents=True)
    css = _lab_css_dir(exporter)
    (static / "lab.css").write_text((css / "index.css").read_text(encoding="utf-8") + "\n"
                                    + (css / "theme-light.css").read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copy(TEMPLATE_DIR / "site.css", static / "site.css")
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    for part in MATHJAX_PARTS:
        dest = static / "mathjax" / part
        if (src / part).is_dir():
            shutil.copytree(src / part, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / part, dest)


def _page(title, body, css):
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1.0">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="icon" href="data:,">\n<link rel="stylesheet" href="{css}">\n</head>\n<body class="site-landing">\n<main>\n{body}\n</main>\n'
            f"</body>\n</html>\n")


def _prepare_out(out):
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SiteError(f"{out} exists and was not written by course_lib.site: choose an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m course_lib.site; rebuilt (emptied) on every build\n")
    return out


def course(readme_text, notebooks_dir):
    """The notebooks in README's arc order, each (stem, 'NN title', its path, its learner's version's path); a clear
    SiteError for one that is listed but missing."""
    _, rows = arc_table(readme_text)
    notebooks = []
    for number, title, rel in rows:
        path = notebooks_dir / Path(rel).name
        learner = notebooks_dir / "learner" / path.name
        if not path.exists():
            raise SiteError(f"notebook {number} ({title}) is listed in README.md's arc as {rel}, but {path} is missing")
        if not learner.exists():
            raise SiteError(f"{learner} (the exercise version of {path.name}) is missing: "
                            f"python -m course_lib.exercises learner writes it")
        notebooks.append((path.stem, f"{number} {title}", path, learner))
    return notebooks


def landing_page(readme_text, site_map):
    """index.html: README's title and opening paragraph, its arc (with a column for the exercise versions), its
    headline results and the licence. README's links are made the site's (README sits at the repository root)."""
    def readme_html(markdown):
        return rewrite_links(mistune.html(markdown), "", "", site_map)

    table, _ = arc_table(readme_text)
    title = re.search(r"^# (.+)$", readme_text, re.M)
    title = title.group(1).strip() if title else "The course"
    intro = re.search(r"^# .+?\n\n(.+?)\n\n", readme_text, re.S)
    learner_of = lambda rel: f"{posixpath.dirname(rel)}/learner/{posixpath.basename(rel)}"  # noqa: E731
    body = "\n".join([
        f"<h1>{html.escape(title)}</h1>",
        readme_html(intro.group(1)) if intro else "",
        '<p class="site-how">Every notebook is shown with its committed outputs, as the course ran it; '
        "its exercise version has each exercise as a stub to fill in. To run them, open <code>notebooks/</code> in "
        "JupyterLab.</p>",
        '<h2 id="the-arc">The arc</h2>', readme_html(with_learner_column(table, learner_of)),
        '<h2 id="headline-results">Headline results</h2>', readme_html(results_block(readme_text)),
        '<h2 id="licence">Licence</h2>',
        '<p>The code is under the MIT License; the notebooks\' prose and figures under '
        '<a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a>: see <a href="LICENSE.txt">LICENSE</a>.'
        "</p>",
    ])
    return _page(title, body, "_static/site.css")


def _write(path, page):
    bad = off_machine_refs(page)
    if bad:
        raise SiteError(f"{path.name} would load from the network: {', '.join(bad[:5])}")
    path.write_text(page, encoding="utf-8")


def build_site(out=BUILD_DIR / "site", readme=REPO_ROOT / "README.md", notebooks_dir=NOTEBOOKS_DIR,
               license_file=REPO_ROOT / "LICENSE", log=print):
    """Build the site into `out` (emptied first if an earlier build wrote it) and return its index.html path."""
    readme, notebooks_dir = Path(readme), Path(notebooks_dir)
    text = readme.read_text(encoding="utf-8")
    results_block(text)  # fail before writing anything
    notebooks = course(text, notebooks_dir)
    listed = {path.name for _, _, path, _ in notebooks}
    for extra in sorted(notebooks_dir.glob("*.ipynb")):
        if extra.name not in listed:
            log(f"course_lib.site: {extra.name} is not in README.md's arc table; it is left off the site")

    out = _prepare_out(out)
    exporter = _exporter()
    _copy_static(out / "_static", exporter)
    shutil.copy(license_file, out / "LICENSE.txt")
    nb_rel = posixpath.relpath(notebooks_dir.resolve().as_posix(), readme.parent.resolve().as_posix())
    site_map = {"LICENSE": "LICENSE.txt", "README.md": "index.html"}  # repository path -> site path
    for stem, _, _, _ in notebooks:
        site_map[f"{nb_rel}/{stem}.ipynb"] = f"{stem}.html"
        site_map[f"{nb_rel}/learner/{stem}.ipynb"] = f"learner/{stem}.html"

    pages = [(stem, title) for stem, title, _, _ in notebooks]
    (out / "learner").mkdir()
    for i, (stem, title, path, learner) in enumerate(notebooks):
        t0 = time.perf_counter()
        for page_dir, src, up, other, other_label, page_title in (
                ("", path, "", f"learner/{stem}.html", "exercise version ✍️", title),
                ("learner", learner, "../", f"../{stem}.html", "version with solutions", f"{title} (exercises)")):
            site = {"source_dir": posixpath.join(nb_rel, page_dir), "page_dir": page_dir, "map": site_map,
                    "static": f"{up}_static", "footer": _footer(up), "nav": _nav(pages, i, page_dir, other, other_label)}
            _write(out / page_dir / f"{stem}.html", render_notebook(exporter, src, page_title, site))
        log(f"course_lib.site: {stem} ({time.perf_counter() - t0:.1f} s)")
    _write(out / "index.html", landing_page(text, site_map))
    return out / "index.html"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m course_lib.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BUILD_DIR / "site", help="the site's folder (default build/site/)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        index = build_site(args.out)
    except SiteError as exc:
        raise SystemExit(f"course_lib.site: {exc}")
    size = sum(p.stat().st_size for p in index.parent.rglob("*") if p.is_file())
    print(f"course_lib.site: wrote {index.parent} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s\n"
          f"  open {index}\n  or serve it: python -m http.server -d {index.parent} --bind 127.0.0.1")


if __name__ == "__main__":
    main()
