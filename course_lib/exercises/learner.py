"""The learner's versions of the notebooks, and the cells an exercise is made of.

One source, two versions. A committed notebook (``notebooks/NN_*.ipynb``) holds each exercise as
three cells:

1. a markdown cell: the task, the stars and minutes, and the hint folded under "Hint" (``exercise_markdown``);
2. the solution cell: the reference solution between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, with
   nbgrader's solution-cell metadata (``grade_id`` = the exercise id);
3. the check cell: ``check("NN.name", name)`` (nbgrader metadata ``locked``).

``learner_version`` replaces every solution region with nbgrader's own stub (``# YOUR CODE HERE`` /
``raise NotImplementedError()``, indented like the marker) and clears the exercise cells' outputs — what
nbgrader's ``ClearSolutions`` preprocessor does, so an instructor who grades with nbgrader gets the same
notebook (a test proves it). ``python -m course_lib.exercises learner`` writes them to
``notebooks/learner/``; ``--check`` only compares.
"""
import copy
import re
from pathlib import Path

import nbformat

from . import get
from ..paths import NOTEBOOKS_DIR

LEARNER_DIR = NOTEBOOKS_DIR / "learner"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's ClearSolutions.code_stub["python"]
TAG = "exercise"  # every cell of an exercise carries this tag


def exercise_markdown(ex):
    """The markdown cell that introduces exercise `ex` (a test keeps the notebooks' cells equal to this)."""
    verb = {"implement": "Implement", "predict": "Predict"}[ex.kind]
    return (f"#### ✍️ Exercise {ex.label}\n\n"
            f"**{verb}** `{ex.signature}`. {ex.task}\n\n"
            f"<details><summary>Hint</summary>\n\n{ex.hint}\n\n</details>")


def _meta(ex, role):
    solution = role == "solution"
    return {"nbgrader": {"grade": False, "grade_id": ex.id if solution else f"{ex.id}.{role}",
                         "locked": not solution, "schema_version": 3, "solution": solution, "task": False},
            "tags": [TAG, role]}


def exercise_cells(ex, solution, check_source):
    """The three cells of exercise `ex`: markdown, solution (source with the markers), check."""
    if BEGIN not in solution or END not in solution:
        raise ValueError(f"{ex.id}: the solution cell must mark its solution with {BEGIN!r} ... {END!r}")
    md = nbformat.v4.new_markdown_cell(exercise_markdown(ex), metadata=_meta(ex, "task"))
    sol = nbformat.v4.new_code_cell(solution, metadata=_meta(ex, "solution"))
    chk = nbformat.v4.new_code_cell(check_source, metadata=_meta(ex, "check"))
    for c, role in ((md, "task"), (sol, "solution"), (chk, "check")):
        c["id"] = f"{ex.id.replace('.', '-').replace('_', '-')}-{role}"  # stable ids: [a-zA-Z0-9-]
    return [md, sol, chk]


def clear_solution(source):
    """Replace each solution region of a cell's source with the stub, as nbgrader's ClearSolutions does."""
    out, inside = [], False
    for line in source.split("\n"):
        if "BEGIN SOLUTION" in line:
            if inside:
                raise ValueError("nested BEGIN SOLUTION")
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out.extend(indent + s for s in STUB.split("\n"))
        elif "END SOLUTION" in line:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a BEGIN SOLUTION without its END SOLUTION")
    return "\n".join(out)


def is_exercise_cell(cell):
    return TAG in cell.get("metadata", {}).get("tags", [])


def learner_version(nb):
    """The learner's version of notebook `nb` (a new notebook; `nb` is left as it is)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if "BEGIN SOLUTION" in cell.source:
            if not cell.metadata.get("nbgrader", {}).get("solution"):
                raise ValueError(f"a solution region outside a solution cell:\n{cell.source[:200]}")
            cell.source = clear_solution(cell.source)
        if cell.cell_type == "code" and is_exercise_cell(cell):
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("celltoolbar", None)
    return nb


def exercise_ids(nb):
    """The ids of the exercises a notebook holds, in order (from the solution cells' nbgrader grade_id)."""
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")]


def notebooks():
    return sorted(Path(NOTEBOOKS_DIR).glob("[0-9][0-9]_*.ipynb"))


def learner_path(path):
    return LEARNER_DIR / Path(path).name


def render(nb):
    return nbformat.writes(nb) + "\n"


def sync_markdown():
    """Rewrite every exercise's markdown cell in the committed notebooks from the registry; return paths changed."""
    changed = []
    for path in notebooks():
        nb = nbformat.read(str(path), as_version=4)
        dirty = False
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id", "")
            if cell.cell_type == "markdown" and gid.endswith(".task"):
                text = exercise_markdown(get(gid[:-len(".task")]))
                if cell.source != text:
                    cell.source, dirty = text, True
        if dirty:
            path.write_text(render(nb), encoding="utf-8")
            changed.append(path)
    return changed


def write_learner_versions(check=False):
    """Write (or, with check=True, compare) every learner's version; return the paths that differ."""
    stale = []
    for path in notebooks():
        text = render(learner_version(nbformat.read(str(path), as_version=4)))
        target = learner_path(path)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return stale
