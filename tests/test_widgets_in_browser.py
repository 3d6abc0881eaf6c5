"""Every notebook that has a widget, run the way a learner runs it: its learner's version, in JupyterLab, in a real
(headless) browser.

One JupyterLab server (127.0.0.1, a random token, no browser of its own, no news, no update check, the read-only
extension manager) serves copies of the learner's versions (notebooks/learner/, every exercise left as its stub) with
the quick preset injected. For each notebook a fresh headless Chromium opens it, runs Run -> Run All Cells from
JupyterLab's menu, waits until every code cell has an execution count and the kernel is idle, and then checks:

  (a) no cell shows an error (nor any widget's output area a traceback), and every exercise's check says its stub is
      not attempted yet: for these notebooks this is test_learner_notebooks.py's pass, run here once instead of twice;
  (b) every widget the kernel displayed rendered (ipywidgets' DOM, not "Error displaying widget"), and every cell that
      builds a widget shows at least one with a control;
  (c) moving each control (a slider's handle by the keyboard, another option of a dropdown, a click on a button...)
      makes the kernel run the widget's callback and changes what the cell shows (its output with the controls left
      out: the text, the plot's image);
  (d) the browser asked nothing of any other machine.

A screenshot of each notebook lands in build/browser/NN_name.png. The widget notebooks are found, not listed: a
notebook is one when a code cell imports ipywidgets. The module is named to run after test_learner_notebooks.py, whose
quick runs of the other notebooks leave the quick preset's artefacts cached; the kernels use the real cache and a
temporary metrics folder.

Small synthetic notebooks (a widget whose output ignores its control; a cell that raises; a callback that raises; an
exercise check that did not see its stub) go through the same checks and must fail them, and another exercises every
kind of control the checks know how to move."""
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import browser
from course_lib.exercises import learner as L
from course_lib.paths import BUILD_DIR, CACHE_DIR, NOTEBOOKS_DIR
from exercise_harness import stubs_not_seen

RUN_ALL_TIMEOUT = 600     # seconds for one notebook's Run All (the quick preset takes well under a minute each)
CALLBACK_TIMEOUT = 120    # seconds for the kernel to answer one moved control
SCREENSHOTS = BUILD_DIR / "browser"

IMPORTS_WIDGETS = re.compile(r"^\s*(import\s+ipywidgets|from\s+ipywidgets\b)", re.M)
USES_WIDGETS = re.compile(r"\bipywidgets\b|\bwidgets\.\w+|\binteract(ive|_manual)?\s*\(")
IMPORT_LINE = re.compile(r"^\s*(import\s|from\s+\S+\s+import\s|#|$)")


def widget_notebooks(folder=NOTEBOOKS_DIR):
    """The notebooks with a code cell that imports ipywidgets."""
    found = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        if any(c.cell_type == "code" and IMPORTS_WIDGETS.search(c.source) for c in nb.cells):
            found.append(path)
    return found


def widget_cells(nb):
    """Indices of the code cells that build a widget: they use ipywidgets and are more than imports."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and USES_WIDGETS.search(c.source)
            and not all(IMPORT_LINE.match(line) for line in c.source.splitlines())]


def quick_copy(src, dst):
    """`src` with the quick preset injected after its parameters cell (papermill's own way) and no stale outputs."""
    import papermill as pm

    pm.execute_notebook(str(src), str(dst), parameters={"quick": True}, prepare_only=True, progress_bar=False,
                        log_output=False)
    nb = nbformat.read(str(dst), as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(nb, str(dst))


# --------------------------------------------------------------------------------------------------------------------
# The JupyterLab server
# --------------------------------------------------------------------------------------------------------------------

LAB_CONFIG = {
    "ServerApp": {"ip": "127.0.0.1", "open_browser": False, "allow_remote_access": False},
    "LabApp": {
        "news_url": None,                                                       # no news feed fetched by the server
        "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "extension_manager": "readonly",                                        # no PyPI look-ups
        "expose_app_in_browser": True,                                          # window.jupyterapp, to read state
    },
}
LAB_SETTINGS = {  # user settings, in a folder of the test's own: nobody's JupyterLab settings are read or written
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},  # every cell in the DOM
}


class Lab:
    """A JupyterLab server on 127.0.0.1 serving `root`, with its own config, settings, runtime and IPython folders."""

    def __init__(self, root, home, log_path):
        self.root, self.token, self.port = Path(root), secrets.token_hex(24), browser.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        for sub in ("config", "settings", "workspaces", "runtime", "ipython", "metrics"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "config" / "jupyter_server_config.json").write_text(json.dumps(LAB_CONFIG))
        for rel, value in LAB_SETTINGS.items():
            (home / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
            (home / "settings" / rel).write_text(json.dumps(value))
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   IPYTHONDIR=str(home / "ipython"), COURSE_CACHE_DIR=str(CACHE_DIR),
                   COURSE_METRICS_DIR=str(home / "metrics"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   PYTHONUNBUFFERED="1")
        env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the plots
        self.log_path = Path(log_path)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", f"--LabApp.user_settings_dir={home / 'settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI's containers run as root
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(self.root), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"JupyterLab did not answer within 120 s:\n{self.log_tail()}")
                time.sleep(0.5)

    def url(self, name):
        return f"{self.base}/lab/tree/{name}?reset&token={self.token}"  # ?reset: a clean workspace every time

    def api(self, method, path, timeout=30):
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def stop_kernels(self):
        """Shut down every session's kernel (each notebook's, once it has been checked: they hold models)."""
        for s in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{s['id']}")
        for k in self.api("GET", "/api/kernels") or []:
            self.api("DELETE", f"/api/kernels/{k['id']}")

    def log_tail(self, n=4000):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def close(self):
        """Kernels first, then the server: /api/shutdown, then terminate, then kill."""
        if self.proc.poll() is None:
            try:
                self.stop_kernels()
                self.api("POST", "/api/shutdown")
                self.proc.wait(20)
            except Exception:  # noqa: BLE001 — whatever happened, the process must go
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    browser.skip_or_fail()
    home = tmp_path_factory.mktemp("lab")
    root = home / "notebooks"
    root.mkdir()
    server = Lab(root, home, home / "jupyterlab.log")
    try:
        yield server
    finally:
        server.close()



# --------------------------------------------------------------------------------------------------------------------
# Reading the notebook's state in the page (window.jupyterapp, exposed by the server's config)
# --------------------------------------------------------------------------------------------------------------------

CONTROL_CLASSES = [".widget-slider", ".widget-dropdown", ".widget-select", ".widget-select-multiple", ".widget-radio",
                   ".widget-toggle-buttons", ".widget-toggle-button", ".widget-button", ".widget-checkbox",
                   ".widget-text", ".widget-textarea"]

JS_HELPERS = r"""
window.__wt = window.__wt || {};
const W = window.__wt;
W.CONTROLS = arguments[arguments.length - 1];
W.panel = () => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                  return w && w.content && w.sessionContext ? w : null; };
W.kernel = () => { const p = W.panel(); return p && p.sessionContext.session && p.sessionContext.session.kernel; };
W.status = () => { const k = W.kernel(); return k ? k.status : 'none'; };
W.cells = () => W.panel().content.widgets;
W.track = () => {  // count the kernel's idle messages that answer a widget's comm message
  const p = W.panel();
  if (W.tracked === p) return;
  W.tracked = p; W.commIdle = 0;
  p.sessionContext.iopubMessage.connect((_, msg) => {
    if (msg.header.msg_type === 'status' && msg.content.execution_state === 'idle'
        && msg.parent_header && msg.parent_header.msg_type === 'comm_msg') W.commIdle += 1;
  });
};
W.signature = (i) => {  // what cell i shows, its controls left out: its text, images, SVG, canvases, HTML frames
  const area = W.cells()[i].node.querySelector('.jp-Cell-outputArea');
  if (!area) return '';
  const canvases = Array.from(area.querySelectorAll('canvas')).map(c => c.toDataURL());
  const copy = area.cloneNode(true);
  copy.querySelectorAll(W.CONTROLS).forEach(e => e.remove());
  return JSON.stringify([copy.textContent, Array.from(copy.querySelectorAll('img')).map(e => e.src),
                         Array.from(copy.querySelectorAll('svg')).map(e => e.outerHTML),
                         Array.from(copy.querySelectorAll('iframe')).map(e => e.srcdoc || e.src), canvases]);
};
W.widgetView = (o) => {  // how the page shows one widget output: rendered, error, loading, closed or missing
  if (!o) return 'missing';
  if (o.querySelector('.jupyter-widgets-error-widget') || /Error displaying widget/.test(o.textContent)) return 'error';
  if (/Loading widget/.test(o.textContent)) return 'loading';
  if (o.querySelector('.jupyter-widgets')) return 'rendered';
  if (o.classList.contains('lm-mod-hidden') && !o.textContent.trim()) return 'closed';  // e.g. tqdm's leave=False
  return 'missing';
};
W.cellState = (c, i) => {
  const m = c.model;
  if (m.type !== 'code') return {i, type: m.type};
  const outs = [];
  for (let j = 0; j < m.outputs.length; j++) outs.push(m.outputs.get(j).toJSON());
  const errors = outs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue);
  c.node.querySelectorAll('.widget-output [data-mime-type="application/vnd.jupyter.stderr"]').forEach(e => {
    if (/Traceback \(most recent call last\)/.test(e.textContent)) errors.push(e.textContent.slice(-600));
  });
  const children = c.node.querySelectorAll('.jp-Cell-outputArea > .jp-OutputArea-child');
  const widgets = [];
  outs.forEach((o, j) => {
    if (!(o.data && o.data['application/vnd.jupyter.widget-view+json'])) return;
    const node = children[j] && children[j].querySelector(':scope > .jp-OutputArea-output');
    const root = node && node.querySelector('.jupyter-widgets');
    widgets.push({view: W.widgetView(node), text: node ? node.textContent.slice(0, 200) : '',
                  controls: root ? node.querySelectorAll(W.CONTROLS).length : 0});
  });
  const text = outs.filter(o => o.output_type === 'stream')
                   .map(o => Array.isArray(o.text) ? o.text.join('') : o.text).join('');
  return {i, type: 'code', count: m.executionCount, errors, widgets, text};
};
W.state = () => W.cells().map(W.cellState);
"""


def js(driver, body, *args):
    """Run `body` in the page with the helpers above (W); `args` are arguments[0], arguments[1], ..."""
    return driver.execute_script(JS_HELPERS + body, *args, ", ".join(CONTROL_CLASSES))


def wait_for(what, predicate, timeout, poll=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def open_notebook(driver, lab, name):
    driver.get(lab.url(name))
    wait_for(f"{name} to open with a kernel", lambda: js(driver, "const p = W.panel(); return !!p && "
             "p.context.isReady && p.content.widgets.length > 0 && W.status() === 'idle';"), 180)
    js(driver, "W.track(); window.jupyterapp.shell.collapseLeft();")  # the file browser off: more notebook on screen


def run_all_from_menu(driver):
    """Run -> Run All Cells, clicked in JupyterLab's menu bar, as a learner would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    menu = driver.find_element(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')]"
                                         "[.//div[contains(@class, 'lm-MenuBar-itemLabel')][text()='Run']]")
    menu.click()
    item = WebDriverWait(driver, 10).until(EC.element_to_be_clickable(
        (By.XPATH, "//ul[contains(@class, 'lm-Menu-content')]/li[contains(@class, 'lm-Menu-item')]"
                   "[.//div[contains(@class, 'lm-Menu-itemLabel')][text()='Run All Cells']]")))
    item.click()


def wait_until_run(driver, timeout):
    """Every code cell executed (or one stopped the run with an error) and the kernel idle, twice in a row."""
    seen = []

    def done():
        cells = [c for c in js(driver, "return W.state();") if c["type"] == "code"]
        finished = all(c["count"] is not None for c in cells) or any(c["errors"] for c in cells)
        seen.append(finished and js(driver, "return W.status();") == "idle")
        return cells if seen[-2:] == [True, True] else None

    return wait_for("every cell to run (Run All) and the kernel to go idle", done, timeout, poll=1.0)


# --------------------------------------------------------------------------------------------------------------------
# Controls: how to move each kind as a learner would (the keyboard on a slider's handle, another option, a click),
# and how to put it back
# --------------------------------------------------------------------------------------------------------------------

class Control:
    """A control in the page. `moves()`: up to a few callables, each moving it to another value and returning what it
    did (none: it has a single value); `restore()` puts back the value it was found with (False: nothing to do)."""
    kind = "control"

    def __init__(self, driver, el):
        from selenium.webdriver.common.by import By

        self.driver, self.el = driver, el
        labels = el.find_elements(By.CSS_SELECTOR, ":scope > .widget-label")
        self.label = (labels[0].get_attribute("textContent").strip() if labels else "") or el.text.strip()[:30] \
            or "(no label)"

    def find(self, css, many=False):
        from selenium.webdriver.common.by import By

        return (self.el.find_elements if many else self.el.find_element)(By.CSS_SELECTOR, css)

    def press(self, element, *keys):
        from selenium.webdriver.common.action_chains import ActionChains

        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", element)
        ActionChains(self.driver).send_keys(*keys).perform()

    def moves(self):
        return []

    def restore(self):
        return False

    def __str__(self):
        return f"{self.kind} {self.label!r}"


class Slider(Control):
    """Int, float and selection sliders: arrow keys on the (first) handle, one step, then four more."""
    kind = "slider"

    def __init__(self, driver, el):
        super().__init__(driver, el)
        self.handle = self.find(".noUi-handle")
        self.start = self.now()

    def now(self):
        return float(self.handle.get_attribute("aria-valuenow"))

    def moves(self):
        from selenium.webdriver.common.keys import Keys

        lo, hi = (float(self.handle.get_attribute(a)) for a in ("aria-valuemin", "aria-valuemax"))
        if lo == hi:
            return []
        self.key, self.back, arrow = ((Keys.ARROW_RIGHT, Keys.ARROW_LEFT, "→") if self.start < hi else
                                      (Keys.ARROW_LEFT, Keys.ARROW_RIGHT, "←"))

        def steps(n):
            def move():
                before = self.find(".widget-readout").text
                self.press(self.handle, *[self.key] * n)
                return f"pressed {arrow} {n}x on its handle: {before} -> {self.find('.widget-readout').text}"
            return move
        return [steps(1), steps(4)]

    def restore(self):
        presses = 0
        while self.now() != self.start and presses < 50:
            self.press(self.handle, self.back)
            presses += 1
        return presses > 0


class Choice(Control):
    """Dropdowns and select lists: the next options, in turn."""

    def __init__(self, driver, el):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        super().__init__(driver, el)
        self.kind = "dropdown" if "widget-dropdown" in el.get_attribute("class") else "select list"
        self.select = Select(el.find_element(By.TAG_NAME, "select"))
        self.texts = [o.text for o in self.select.options]
        self.start = self.index()

    def index(self):
        return self.driver.execute_script("return arguments[0].selectedIndex;", self.select._el)

    def pick(self, j):
        if self.select.is_multiple:
            self.select.deselect_all()
        self.select.select_by_index(j)

    def moves(self):
        others = [(self.start + k) % len(self.texts) for k in range(1, len(self.texts))][:3]

        def to(j):
            def move():
                was = self.texts[self.start] if self.start >= 0 else "(nothing selected)"
                self.pick(j)
                return f"picked {self.texts[j]!r} (was {was})"
            return move
        return [to(j) for j in others]

    def restore(self):
        if self.index() == self.start or self.start < 0:
            return False
        self.pick(self.start)
        return True


class Buttons(Control):
    """Toggle buttons and radio buttons: click another one."""

    def __init__(self, driver, el):
        super().__init__(driver, el)
        radio = "widget-radio" in el.get_attribute("class")
        self.kind = "radio buttons" if radio else "toggle buttons"
        self.items = self.find("input[type=radio]" if radio else "button.widget-toggle-button", many=True)
        self.start = self.chosen()

    def chosen(self):
        return [j for j, b in enumerate(self.items)
                if b.is_selected() or "mod-active" in (b.get_attribute("class") or "")]

    def name(self, j):
        return self.items[j].text.strip() or self.driver.execute_script(
            "return arguments[0].parentNode.textContent.trim();", self.items[j])

    def moves(self):
        def click(j):
            return lambda: (self.items[j].click(), f"clicked {self.name(j)!r}")[1]
        return [click(j) for j in range(len(self.items)) if j not in self.start][:3]

    def restore(self):
        if self.chosen() == self.start or not self.start:
            return False
        self.items[self.start[0]].click()
        return True


class Checkbox(Control):
    kind = "checkbox"

    def __init__(self, driver, el):
        super().__init__(driver, el)
        self.box = self.find("input[type=checkbox]")
        self.start = self.box.is_selected()

    def moves(self):
        return [lambda: (self.box.click(), f"clicked it ({'on' if self.box.is_selected() else 'off'} now)")[1]]

    def restore(self):
        if self.box.is_selected() == self.start:
            return False
        self.box.click()
        return True


class TextBox(Control):
    """Text, number and text-area boxes: type another value and press Enter."""
    kind = "text box"

    def __init__(self, driver, el):
        super().__init__(driver, el)
        self.box = self.find("input, textarea")
        self.start = self.box.get_attribute("value") or ""

    def type(self, text):
        from selenium.webdriver.common.keys import Keys

        self.press(self.box, Keys.CONTROL, "a")
        self.box.send_keys(Keys.DELETE, text, Keys.ENTER)

    def moves(self):
        try:
            new = str(float(self.start) + 1) if "." in self.start else str(int(self.start) + 1)
        except ValueError:
            new = self.start + " and more"
        return [lambda: (self.type(new), f"typed {new!r} and Enter (was {self.start!r})")[1]]

    def restore(self):
        if (self.box.get_attribute("value") or "") == self.start:
            return False
        self.type(self.start)
        return True


class Button(Control):
    """A button is an action: clicked, never put back (a toggle button is clicked again)."""

    def __init__(self, driver, el):
        super().__init__(driver, el)
        self.toggle = "widget-toggle-button" in el.get_attribute("class")
        self.kind = "toggle button" if self.toggle else "button"
        self.label = el.text.strip() or el.get_attribute("title") or "(no label)"
        self.clicked = False

    def click(self):
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", self.el)
        self.el.click()
        self.clicked = not self.clicked

    def moves(self):
        return [lambda: (self.click(), "clicked it")[1]]

    def restore(self):
        if not (self.toggle and self.clicked):
            return False
        self.click()
        return True


KINDS = {"widget-slider": Slider, "widget-dropdown": Choice, "widget-select": Choice,
         "widget-select-multiple": Choice, "widget-toggle-buttons": Buttons, "widget-radio": Buttons,
         "widget-checkbox": Checkbox, "widget-text": TextBox, "widget-textarea": TextBox,
         "widget-toggle-button": Button, "widget-button": Button}


def controls_of(driver, cell):
    """The controls cell `cell` shows, in page order (a group of toggle buttons is one control)."""
    els = js(driver, "const area = W.cells()[arguments[0]].node.querySelector('.jp-Cell-outputArea');"
                     "return Array.from(area.querySelectorAll(W.CONTROLS))"
                     "  .filter(e => !e.parentNode.closest('.widget-toggle-buttons'));", cell)
    out = []
    for el in els:
        classes = (el.get_attribute("class") or "").split()
        out.append(next(KINDS[c] for c in KINDS if c in classes)(driver, el))
    return out


# --------------------------------------------------------------------------------------------------------------------
# The check itself
# --------------------------------------------------------------------------------------------------------------------

class WidgetBroke(AssertionError):
    """A moved control made the cell show an error."""


def settle(driver, cell, n0, timeout):
    """Wait for the kernel to answer at least one comm message after count `n0`, then for the kernel to stay idle and
    the cell's output to stop changing; returns the cell's signature."""
    wait_for("the kernel to answer the moved control (no comm message reached it?)",
             lambda: js(driver, "return W.commIdle;") > n0, timeout, poll=0.2)
    prev, stable = None, 0
    deadline = time.monotonic() + timeout
    while stable < 3 and time.monotonic() < deadline:  # ipywidgets may send a held-back update after the first idle
        time.sleep(0.25)
        sig, idle = js(driver, "return [W.signature(arguments[0]), W.status() === 'idle'];", cell)
        stable = stable + 1 if (sig == prev and idle) else 0
        prev = sig
    errors = js(driver, "return W.cellState(W.cells()[arguments[0]], arguments[0]).errors;", cell)
    if errors:
        raise WidgetBroke("the output shows an error: " + " | ".join(errors))
    return prev


def act(driver, cell, action, timeout):
    """Do `action` (move or restore a control); returns (what it said, the cell's signature once settled)."""
    n0 = js(driver, "return W.commIdle;")
    said = action()
    if said is False:  # a restore with nothing to put back
        return said, js(driver, "return W.signature(arguments[0]);", cell)
    return said, settle(driver, cell, n0, timeout)


def live_by_itself(driver, cell, control, timeout):
    """What moving `control` did when it changed the cell's output (put back after each try), else None; and the
    moves tried."""
    tried = []
    for move in control.moves():
        before = js(driver, "return W.signature(arguments[0]);", cell)
        did, after = act(driver, cell, move, timeout)
        act(driver, cell, control.restore, timeout)
        tried.append(did)
        if after != before:
            return did, tried
    return None, tried


def live_through(driver, cell, control, button, timeout):
    """A control whose effect shows when a button is clicked (a guess, then "reveal"): clicking the button after moving
    the control shows something else than clicking it before. What it did, or None."""
    for move in control.moves()[:1]:
        _, shown = act(driver, cell, button.click, timeout)
        did, _ = act(driver, cell, move, timeout)
        _, after = act(driver, cell, button.click, timeout)
        act(driver, cell, control.restore, timeout)
        if after != shown:
            return f"{did}, then clicked {button.label!r}"
    return None


def check_widget(driver, name, w, n_widgets, cell, timeout):
    """Move every control of the widget(s) in `cell`: each must change what the cell shows, from the widget's first
    state (put back after each try), or through a button of the widget (a guess shown by "reveal"), or once every other
    control of the widget has moved, by its first move or by its last (a label budget that matters only when the
    compute budget lets more methods in).
    Returns (controls that worked, with what was done; problems)."""
    controls = controls_of(driver, cell)
    where = lambda c: f"{name}, widget {w} of {n_widgets} (cell {cell}), {c}"  # noqa: E731
    values = [c for c in controls if not isinstance(c, Button)]
    buttons = [c for c in controls if isinstance(c, Button)]
    worked, dead, problems = {}, {}, []

    def attempt(c):
        did, tried = live_by_itself(driver, cell, c, timeout)
        for b in buttons if did is None else []:
            did = live_through(driver, cell, c, b, timeout)
            if did:
                break
        return did, tried

    for c in values + buttons:
        if not c.moves():
            problems.append(f"{where(c)}: it has a single value, nothing to move it to")
            continue
        try:
            did, tried = attempt(c)
        except (WidgetBroke, AssertionError) as e:
            problems.append(f"{where(c)}: {e}")
            continue
        if did:
            worked[c] = did
        else:
            dead[c] = tried
    for pick in (0, -1):  # second chances in other states: every other control moved by its first, then its last move
        if not dead or len(values) < 2:
            break
        try:
            for c in values:
                if c.moves():
                    act(driver, cell, c.restore, timeout)
                    act(driver, cell, c.moves()[pick], timeout)
            for c in list(dead):
                act(driver, cell, c.restore, timeout)
                did, tried = attempt(c)
                if did:
                    worked[c] = did + f" (with the widget's other controls moved by their {('first', 'last')[pick]} move)"
                    dead.pop(c)
                act(driver, cell, c.moves()[pick], timeout)  # moved again: part of the next one's state
        except (WidgetBroke, AssertionError) as e:
            problems.append(f"{name}, widget {w} (cell {cell}), with its other controls moved: {e}")
            break
    for c, tried in dead.items():
        problems.append(f"{where(c)}: the output did not change ({'; '.join(map(str, tried))})")
    return [f"{where(c)}: {did}" for c, did in worked.items()], problems


def check_widgets(driver, lab, name, *, run_timeout=RUN_ALL_TIMEOUT, callback_timeout=CALLBACK_TIMEOUT,
                  screenshot=None, timings=None):
    """Open `name` (in the server's root) in the browser, run all its cells and check (a)-(c) of the module's
    docstring (the exercises' checks of (a) where the notebook has any). Raises AssertionError naming the notebook,
    the widget and the control that failed; returns the controls moved, with what was done."""
    timings = {} if timings is None else timings
    nb = nbformat.read(str(lab.root / name), as_version=4)
    expected = widget_cells(nb)
    t0 = time.perf_counter()
    open_notebook(driver, lab, name)
    timings["open"] = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        run_all_from_menu(driver)
        cells = wait_until_run(driver, run_timeout)
        timings["run all"] = time.perf_counter() - t1

        # (a) no error anywhere
        errors = [f"cell {c['i']} [{c['count']}]: " + "; ".join(c["errors"]) for c in cells if c["errors"]]
        assert not errors, f"{name}: error output after Run All:\n" + "\n".join(errors)
        never = [c["i"] for c in cells if c["count"] is None]
        assert not never, f"{name}: cells {never} never ran"
        unseen = stubs_not_seen(nb, {c["i"]: c["text"] for c in cells})
        assert not unseen, f"{name}: exercise checks that did not see their stub: {unseen}"

        # (b) every widget the kernel displayed rendered; every cell that builds one shows one with a control
        def views():
            state = {c["i"]: c for c in js(driver, "return W.state();") if c["type"] == "code"}
            pending = [w for c in state.values() for w in c["widgets"] if w["view"] in ("loading", "missing")]
            return state, pending
        try:
            state = wait_for("the widgets to render", lambda: (lambda s, p: None if p else s)(*views()), 60)
        except AssertionError:
            state, _ = views()
        broken = [f"cell {i}: {w['view']} {w['text']!r}" for i, c in state.items() for w in c["widgets"]
                  if w["view"] not in ("rendered", "closed")]
        assert not broken, f"{name}: widgets the kernel displayed that the page does not show:\n" + "\n".join(broken)
        shown = [i for i in expected if any(w["view"] == "rendered" and w["controls"] for w in state[i]["widgets"])]
        assert shown == expected, (
            f"{name}: {len(expected)} cells build a widget ({expected}), {len(shown)} show one with a control "
            f"({shown}): {[{'cell': i, 'widgets': state[i]['widgets']} for i in expected]}")

        # (c) every control changes what its cell shows
        t2 = time.perf_counter()
        moved, problems = [], []
        for w, i in enumerate(expected, 1):
            ok, bad = check_widget(driver, name, w, len(expected), i, callback_timeout)
            moved += ok
            problems += bad
        timings["widgets"] = time.perf_counter() - t2
        assert not problems, f"{name}: controls that do not work in the browser:\n" + "\n".join(problems)
        return moved
    finally:
        if screenshot:
            try:
                js(driver, "const c = W.cells()[arguments[0]].node;"  # the first widget, not the code above it
                           "(c.querySelector('.jp-Cell-outputArea') || c).scrollIntoView({block: 'start'});",
                   expected[0] if expected else 0)
                time.sleep(0.3)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(screenshot))
            except Exception as e:  # noqa: BLE001 — a screenshot must never hide the real failure
                print(f"{name}: no screenshot ({e})")


def in_browser(lab, name, **kw):
    """check_widgets in a fresh Chromium, closed afterwards with the notebook's kernel. Returns (controls moved,
    requests that left the machine, timings)."""
    driver = browser.chrome()
    timings = kw.setdefault("timings", {})
    try:
        moved = check_widgets(driver, lab, name, **kw)
        return moved, browser.off_machine(browser.requests_made(driver)), timings
    finally:
        driver.quit()
        lab.stop_kernels()

# --------------------------------------------------------------------------------------------------------------------
# The checks must be able to fail: synthetic notebooks, small and fast, on the same server
# --------------------------------------------------------------------------------------------------------------------

def synthetic(lab, name, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, str(lab.root / name))
    return name


def test_the_checks_fail_on_a_widget_whose_output_ignores_its_control(lab):
    name = synthetic(lab, "synthetic_constant.ipynb", "import ipywidgets as widgets\n"
                     "widgets.interact(lambda n: print('always the same'), n=widgets.IntSlider(3, 0, 9));")
    with pytest.raises(AssertionError, match=r"slider 'n': the output did not change"):
        in_browser(lab, name, run_timeout=120, callback_timeout=30)


def test_the_checks_fail_on_an_error_cell(lab):
    name = synthetic(lab, "synthetic_error.ipynb", "import ipywidgets as widgets\nx = 1",
                     "raise ValueError('a deliberate error')",
                     "widgets.interact(lambda n: print(n), n=widgets.IntSlider(3, 0, 9));")
    with pytest.raises(AssertionError, match=r"error output after Run All:\n.*ValueError: a deliberate error"):
        in_browser(lab, name, run_timeout=120, callback_timeout=30)


def test_the_checks_fail_on_a_callback_that_raises(lab):
    name = synthetic(lab, "synthetic_raises.ipynb", "import ipywidgets as widgets\n"
                     "def f(n):\n    if n != 3:\n        raise KeyError(n)\n    print(n)\n"
                     "widgets.interact(f, n=widgets.IntSlider(3, 0, 9));")
    with pytest.raises(AssertionError, match=r"slider 'n': .*the output shows an error"):
        in_browser(lab, name, run_timeout=120, callback_timeout=30)


def test_the_checks_fail_on_an_exercise_check_that_did_not_see_its_stub(lab):
    name = synthetic(lab, "synthetic_checks.ipynb", "print('99.first: not attempted yet')", "print('99.second: 3 checks passed')")
    nb = nbformat.read(str(lab.root / name), as_version=4)
    for c, grade_id in zip(nb.cells, ["99.first.check", "99.second.check"]):
        c.metadata["nbgrader"] = {"grade_id": grade_id}
    nbformat.write(nb, str(lab.root / name))
    with pytest.raises(AssertionError, match=r"checks that did not see their stub: \['99.second'\]"):
        in_browser(lab, name, run_timeout=120, callback_timeout=30)


def test_every_kind_of_control_is_moved(lab):
    name = synthetic(lab, "synthetic_controls.ipynb", "import ipywidgets as widgets\n"
                     "widgets.interact(lambda a, b, c, d, e, f: print(a, b, c, d, e, f),\n"
                     "    a=widgets.IntSlider(9, 0, 9), b=widgets.Dropdown(options=['x', 'y']),\n"
                     "    c=widgets.ToggleButtons(options=['p', 'q']), d=widgets.Checkbox(False),\n"
                     "    e=widgets.Text('t', continuous_update=False), f=widgets.FloatSlider(value=0.5, min=0, max=1));",
                     "import ipywidgets as widgets\n"  # a guess that shows only when "reveal" is clicked
                     "out = widgets.Output()\nguess = widgets.Dropdown(options=[1, 2, 3])\n"
                     "button = widgets.Button(description='reveal')\n"
                     "button.on_click(lambda _: (out.clear_output(), out.append_stdout(f'you said {guess.value}')))\n"
                     "widgets.VBox([guess, button, out])")
    moved, off, _ = in_browser(lab, name, run_timeout=120, callback_timeout=30)
    kinds = [m.split(", ")[2].split(" '")[0] for m in moved]
    assert kinds == ["slider", "dropdown", "toggle buttons", "checkbox", "text box", "slider", "dropdown", "button"], moved
    assert not off, off


# --------------------------------------------------------------------------------------------------------------------
# The course's widget notebooks
# --------------------------------------------------------------------------------------------------------------------

NOTEBOOKS = widget_notebooks()
TIMES = {}


def test_widget_notebooks_are_found():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_widgets_work_in_jupyterlab(lab, path):
    """The learner's version, every stub untouched, on the quick preset: its widgets, and its run green."""
    quick_copy(L.learner_path(path), lab.root / path.name)
    assert len(L.exercise_ids(nbformat.read(str(lab.root / path.name), as_version=4))) >= 3
    t0 = time.perf_counter()
    moved, off, timings = in_browser(lab, path.name, screenshot=SCREENSHOTS / f"{path.stem}.png")
    TIMES[path.stem] = seconds = time.perf_counter() - t0
    print(f"\n{path.stem}: {seconds:.0f} s in the browser (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"); {len(moved)} controls moved:\n  " + "\n  ".join(moved))
    assert not off, f"{path.name}: requests that left the machine: {off}"


def test_widget_notebooks_total_time():
    """The browser pass's cost in CI, printed for the log; far over budget is a failure."""
    if not TIMES:
        pytest.skip("no widget notebook ran")
    total = sum(TIMES.values())
    slowest = max(TIMES, key=TIMES.get)
    print(f"\nwidget notebooks in the browser: {total:.0f} s in all, slowest {slowest} ({TIMES[slowest]:.0f} s)")
    assert total < 900, f"the browser pass took {total:.0f} s; {slowest} dominates ({TIMES[slowest]:.0f} s)"
