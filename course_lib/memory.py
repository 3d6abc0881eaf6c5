"""How many bytes a computation holds: `peak_memory` (the most at once) and `memory_held` (what is still
held when it returns), both from torch.profiler's allocator events.

A measurement utility with no dependence on the rest of course_lib: notebook 03 measures
standard vs tiled attention with it, notebooks 08 and 10 the training steps of the alignment
methods, `python -m course_lib.bench flash` the attention implementations, and notebook 02 the
bytes a KV cache really holds (`memory_held`).
"""
import os

from torch.profiler import ProfilerActivity, profile


def peak_memory(fn, *args, **kwargs):
    """(fn(*args, **kwargs), the most bytes the call held at once), from torch.profiler.

    The profiler (profile_memory=True) records every allocation and free of PyTorch's CPU
    allocator, including the scratch tensors an ATen kernel takes from it; replaying them in
    time order gives the live bytes at every moment, and their maximum is the peak. Memory held
    before the call (the inputs) is not counted; the result, if it is a new tensor, is. Not seen:
    what a library allocates outside PyTorch's allocator (MKL/oneDNN packing buffers and
    workspaces, OpenMP thread stacks) and Python objects, so this is a lower bound on the
    process's peak."""
    result, _, peak = memory_held(fn, *args, **kwargs)
    return result, peak


def memory_held(fn, *args, **kwargs):
    """(fn(*args, **kwargs), bytes held, peak bytes): `held` is what the call allocated and had not freed when it
    returned — the bytes of what it returns or stores away, as PyTorch's CPU allocator counts them, not as
    shapes say — and `peak` is `peak_memory`'s. Memory held before the call is not counted."""
    result, events = _allocator_events(fn, args, kwargs)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, live, peak


def _allocator_events(fn, args, kwargs):
    """Run fn under torch.profiler; (result, [(start_ns, +bytes allocated / -bytes freed)] in time order)."""
    if not callable(fn):
        raise ValueError(f"fn must be callable (pass the function and its arguments, peak_memory(f, x), "
                         f"not the result of calling it), got {type(fn).__name__}")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's start/stop log lines out of notebooks
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    return result, events
