"""What every notebook keeps for the learner's sake: a `quick` preset, CI bookkeeping in one cell at the end,
nbval's output checks as cell tags (not comments in the code the learner reads)."""
import ast
import re

import nbformat
import pytest

from course_lib.exercises.learner import notebooks

PATHS = notebooks()


def _code(path):
    return [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_quick_preset_follows_the_parameters(path):
    cells = _code(path)
    i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    params = ast.parse(cells[i].source)
    assigned = {t.id for n in params.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert "quick" in assigned and "quick = False" in cells[i].source
    assert "if quick:" in cells[i + 1].source, "the quick preset is the cell right after the parameters"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_metrics_are_recorded_in_one_cell_at_the_end(path):
    cells = _code(path)
    with_records = [c for c in cells if "report.record(" in c.source or "report.start(" in c.source]
    assert len(with_records) == 1, [c.source[:80] for c in with_records]
    assert with_records[0] is cells[-1] and with_records[0].source.lstrip().startswith("report.start(")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_output_checks_are_tags_not_comments(path):
    for c in _code(path):
        assert "NBVAL_" not in c.source, c.source[:120]


SCAFFOLDING = re.compile(r"(?i)\bthe guide\b|\bguide['’]s\b|GuideMultiHead|->\s*met\b|target\b.{0,40}\bmet\b")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_no_author_scaffolding_in_the_learners_view(path):
    """Learners never saw the concept guide the course grew from, nor its targets: a notebook states each claim
    itself ("a common claim is that ..."), in its prose, its code and its saved outputs."""
    nb = nbformat.read(str(path), as_version=4)
    texts = [c.source for c in nb.cells]
    texts += [o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
              for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    found = [m.group(0) for t in texts for m in SCAFFOLDING.finditer(t)]
    assert not found, found
