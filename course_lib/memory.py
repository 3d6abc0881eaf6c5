"""How many bytes a computation holds at once: `peak_memory`, from torch.profiler's allocator events.

A measurement utility with no dependence on the rest of course_lib: notebook 03 measures
standard vs tiled attention with it, notebooks 08 and 10 the training steps of the alignment
methods, and `python -m course_lib.bench flash` the attention implementations.
"""
import os

from torch.profiler import ProfilerActivity, profile


def peak_memory(fn, *args, **kwargs):
    """(fn(*args, **kwargs), the most bytes the call held at once), from torch.profiler.

    The profiler (profile_memory=True) records every allocation and free of PyTorch's CPU
    allocator, kernel-internal buffers included; replaying them in time order gives the
    live bytes at every moment, and their maximum is the peak. Memory held before the call
    (the inputs) is not counted; the result, if it is a new tensor, is."""
    if not callable(fn):
        raise ValueError(f"fn must be callable (pass the function and its arguments, peak_memory(f, x), "
                         f"not the result of calling it), got {type(fn).__name__}")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's start/stop log lines out of notebooks
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak
