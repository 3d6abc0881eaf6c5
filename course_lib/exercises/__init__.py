"""Exercises: the learner writes the code, a check answers in seconds.

    from course_lib.exercises import check, hint
    def causal_mask(T):
        ...
    check("01.causal_mask", causal_mask)    # ✓ 01.causal_mask — 5 checks passed

Every exercise sits in its notebook where the idea is taught. The committed notebook holds the reference
solution between nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers; the learner's version
(``notebooks/learner/``, written by ``python -m course_lib.exercises learner``) holds a stub that raises
``NotImplementedError``. ``check`` then

- passes: prints one line and returns True;
- fails: raises ``AssertionError`` whose message is a targeted hint ("rows don't sum to 1: ...");
- meets the untouched stub: prints "not attempted yet" and returns False, and the notebook goes on with
  the library's tested twin (``reference(exercise_id)``), so skipping an exercise never breaks a later cell.

With ``COURSE_STRICT_CHECKS=1`` in the environment (for grading, e.g. ``nbgrader autograde``) an untouched stub
fails its check instead. ``python -m course_lib.exercises list`` prints every exercise; ``show ID`` its task and
hint.
The checks of notebook NN live in the module named after its idea (``attention`` for 01, ...); each check
compares the learner's function with the library's twin on inputs it makes, and names the mistake when the
output matches a known wrong answer (softmax over the wrong axis, a missing scale, an inverted mask, ...).
"""
from dataclasses import dataclass, field
import importlib
import math
import os

import torch

STARS = {1: "★", 2: "★★", 3: "★★★"}
KINDS = {  # what the learner does
    "implement": "write the function; the check runs it",
    "predict": "predict a number or a choice before running the measurement; the check computes the truth",
}
MODULES = ("attention", "variants", "flash", "alignment", "sft", "reward_model", "ppo", "dpo", "cai",
           "comparison", "scaling")  # notebook 01 ... 11, in order


class Wrong(Exception):
    """A check's verdict on a wrong answer; its message is the hint the learner reads."""


@dataclass
class Exercise:
    id: str                # "NN.name": the notebook's number and the function's name
    notebook: str          # the notebook's file stem, e.g. "01_attention_from_scratch"
    stars: int             # 1 ★ warm-up, 2 ★★ the idea itself, 3 ★★★ the hard one
    minutes: int           # a typical learner's time, reading included
    signature: str         # what to write, e.g. "causal_mask(T) -> bool tensor (T, T)"
    task: str              # one or two sentences: what to do
    hint: str              # revealed on demand (the notebook's "Hint" fold, or hint(id))
    reference: object = None  # the library's tested twin, or the true answer of a prediction
    kind: str = "implement"   # see KINDS
    checks: list = field(default_factory=list)  # functions fn -> None that raise Wrong(hint)

    def check(self, f):
        """Decorator: add a check (run in the order added)."""
        self.checks.append(f)
        return f

    @property
    def name(self):
        return self.id.split(".", 1)[1]

    @property
    def label(self):
        return f"{self.id} {STARS[self.stars]} · ~{self.minutes} min"


_REGISTRY = {}


def exercise(id, **kwargs):
    """Register an exercise (used by the modules below) and return it, to add checks with @ex.check."""
    if id in _REGISTRY:
        raise ValueError(f"exercise {id!r} is registered twice")
    if kwargs.get("stars") not in STARS:
        raise ValueError(f"{id}: stars must be 1, 2 or 3")
    if kwargs.get("kind", "implement") not in KINDS:
        raise ValueError(f"{id}: kind must be one of {sorted(KINDS)}")
    ex = Exercise(id=id, **kwargs)
    _REGISTRY[id] = ex
    return ex


def _load():
    for m in MODULES:
        importlib.import_module(f"{__name__}.{m}")


def registry():
    """Every exercise, id -> Exercise, in notebook order."""
    _load()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[0].split(".")[0]))  # stable: notebook, then as taught


def get(exercise_id):
    reg = registry()
    if exercise_id not in reg:
        near = [i for i in reg if i.split(".")[0] == str(exercise_id).split(".")[0]] or list(reg)
        raise KeyError(f"no exercise {exercise_id!r}; this notebook's are: {', '.join(near)}")
    return reg[exercise_id]


def hint(exercise_id):
    """Print an exercise's hint."""
    ex = get(exercise_id)
    print(f"Hint for {ex.id}: {ex.hint}")


def reference(exercise_id):
    """The library's tested twin of an exercise (what the notebook uses when the exercise is skipped)."""
    return get(exercise_id).reference


def check(exercise_id, fn):
    """Run exercise `exercise_id`'s checks on the learner's function `fn` (see the module docstring)."""
    ex = get(exercise_id)
    if not callable(fn):
        raise TypeError(f"{ex.id}: pass your function itself, e.g. check({ex.id!r}, {ex.name}), "
                        f"not {type(fn).__name__}")
    for i, c in enumerate(ex.checks, 1):
        try:
            c(fn)
        except NotImplementedError:
            if os.environ.get("COURSE_STRICT_CHECKS") == "1":  # grading (nbgrader autograde): a stub earns nothing
                raise AssertionError(f"{ex.id}: not attempted (the stub raises NotImplementedError)") from None
            print(f"… {ex.id}: not attempted yet — the notebook continues with the reference")
            return False
        except Wrong as w:
            raise AssertionError(f"{ex.id} (check {i} of {len(ex.checks)}): {w}") from None
        except Exception as e:  # the learner's code crashed: say so, keep the traceback
            raise AssertionError(f"{ex.id} (check {i} of {len(ex.checks)}): your function raised "
                                 f"{type(e).__name__}: {e}. Hint: {ex.hint}") from e
    n = len(ex.checks)
    print(f"✓ {ex.id} — {n} check{'s' if n != 1 else ''} passed")
    return True


# ------------------------------------------------------------------ helpers the checks share
def as_tensor(x, what):
    if isinstance(x, torch.Tensor):
        return x
    raise Wrong(f"{what} should be a torch tensor, got {type(x).__name__}")


def expect_shape(x, shape, what):
    x = as_tensor(x, what)
    if tuple(x.shape) != tuple(shape):
        raise Wrong(f"{what} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x


def close(a, b, atol=1e-5, rtol=1e-4):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        return False
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return bool(torch.equal(a.bool(), b.bool()))
    return bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))  # nan only where a mistake has it


def expect_close(got, want, what, mistakes=(), atol=1e-5, rtol=1e-4, otherwise=""):
    """`got` must equal `want`; if it equals one of `mistakes` ((wrong answer, hint), ...) say that hint."""
    want = torch.as_tensor(want)
    got = expect_shape(got, want.shape, what) if isinstance(got, torch.Tensor) or want.ndim else got
    if close(got, want, atol, rtol):
        return
    for wrong, why in mistakes:
        if close(got, wrong, atol, rtol):
            raise Wrong(why)
    g, w = torch.as_tensor(got).double(), want.double()
    err = (g - w).abs().max().item() if g.shape == w.shape and g.numel() else float("nan")
    raise Wrong(f"{what} differs from the reference (max abs error {err:.3g}). {otherwise}".strip())


def expect_number(got, want, what, rel=1e-6, mistakes=(), otherwise=""):
    """A Python number within `rel` of `want`; mistakes as in expect_close, compared the same way."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise Wrong(f"{what} should be a number, got {type(got).__name__}")
    same = lambda a, b: math.isclose(a, b, rel_tol=rel, abs_tol=rel)  # noqa: E731
    if same(got, want):
        return
    for wrong, why in mistakes:
        if same(got, wrong):
            raise Wrong(why)
    raise Wrong(f"{what} = {got!r}, expected {want!r}. {otherwise}".strip())
