"""python -m course_lib.prepare: build every cached artefact once, before a workshop or a first study session.

The alignment notebooks (04-10) start from models and data that the course trains itself (the pretrained base,
SFT, the preferences, the reward model, PPO, the stronger critic of 09). Each is cached under
``.cache/checkpoints`` the first time a notebook needs it; this command builds them all up front, with a
progress bar and the total time, so that a room of laptops can open any notebook and start at once.
What is already cached (and intact) is kept; run it again after changing a recipe.

    python -m course_lib.prepare            # everything
    python -m course_lib.prepare sft ppo    # some artefacts (and their parents)
"""
import sys
import time

from tqdm.auto import tqdm

from . import checkpoints


def main(argv=None):
    names = list(sys.argv[1:] if argv is None else argv) or list(checkpoints.ARTEFACTS)
    for name in names:
        checkpoints.artefact(name)  # an unknown name fails before anything is trained
    t0, built = time.perf_counter(), 0
    bar = tqdm(names, unit="artefact", desc="preparing", file=sys.stdout)
    for name in bar:
        bar.set_postfix_str(name)
        t, started = time.perf_counter(), time.time()
        folder = checkpoints.ensure(name, progress=False)  # a missing or corrupt artefact is (re)built
        was_ready = folder.stat().st_mtime < started         # a folder written now was built now
        built += not was_ready
        bar.write(f"{name:14s} {'cached' if was_ready else 'built '} {time.perf_counter() - t:7.1f} s  "
                  f"({checkpoints.artefact(name).doc})")
    bar.close()
    total = time.perf_counter() - t0
    print(f"{len(names)} artefacts ready in {total:.0f} s ({built} built, {len(names) - built} already cached) "
          f"under {checkpoints.root()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
