"""python -m course_lib.exercises list | show ID | learner [--check]

    list             every exercise: id, notebook, stars, minutes, kind, signature and task
    show ID          one exercise's task and hint
    learner          write the learner's versions into notebooks/learner/
    learner --check  exit 1 if a committed learner's version differs from what would be written
    sync             rewrite the exercises' markdown cells in the notebooks from the registry (task, hint)
"""
import argparse
import sys

from . import KINDS, STARS, get, registry
from .learner import LEARNER_DIR, sync_markdown, write_learner_versions


def _first_sentence(text):
    return text.split(". ")[0].rstrip(".") + "."


def list_exercises(out=None):
    out = out or sys.stdout
    reg = registry()
    for ex in reg.values():
        print(f"{ex.id:32s} {ex.notebook:30s} {STARS[ex.stars]:3s} {ex.minutes:3d} min  {ex.kind:9s} "
              f"{ex.signature}\n{'':32s} {_first_sentence(ex.task)}", file=out)
    per = {}
    for ex in reg.values():
        per[ex.notebook] = per.get(ex.notebook, 0) + 1
    code = sum(ex.kind == "implement" for ex in reg.values())
    print(f"\n{len(reg)} exercises ({code} implement, {len(reg) - code} predict) in {len(per)} notebooks, "
          f"{min(per.values())}–{max(per.values())} per notebook, "
          f"{sum(ex.minutes for ex in reg.values())} minutes in all", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m course_lib.exercises", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every exercise")
    s = sub.add_parser("show", help="one exercise's task and hint")
    s.add_argument("id")
    ln = sub.add_parser("learner", help="write the learner's versions")
    ln.add_argument("--check", action="store_true", help="only compare; exit 1 if any differs")
    sub.add_parser("sync", help="rewrite the exercises' markdown cells from the registry")
    a = p.parse_args(argv)
    if a.command == "list":
        list_exercises()
    elif a.command == "show":
        try:
            ex = get(a.id)
        except KeyError as e:
            raise SystemExit(str(e.args[0]))
        print(f"{ex.label}  ({ex.notebook}, {ex.kind}: {KINDS[ex.kind]})\n{ex.signature}\n\n{ex.task}\n\nHint: {ex.hint}")
    elif a.command == "sync":
        changed = sync_markdown()
        print(f"rewrote the exercise cells of {len(changed)} notebook(s)" + "".join(f"\n  {c}" for c in changed))
    else:
        stale = write_learner_versions(check=a.check)
        if a.check and stale:
            raise SystemExit("out of date (run python -m course_lib.exercises learner): "
                             + ", ".join(str(s) for s in stale))
        print(f"{'checked' if a.check else 'wrote'} the learner's versions in {LEARNER_DIR}"
              + (f" ({len(stale)} changed)" if not a.check else ""))


if __name__ == "__main__":
    main()
