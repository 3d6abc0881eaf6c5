"""course_lib.memory: the most bytes a call holds at once."""
import ast
import inspect

import pytest
import torch

from course_lib import memory
from course_lib.memory import peak_memory


def test_peak_memory_counts_allocations_and_frees():
    def two_temporaries(n):
        a = torch.ones(n)  # 4n bytes
        b = a * 2  # 8n live
        del a
        return b + 1  # b and the result: 8n live, then b is freed

    result, peak = peak_memory(two_temporaries, 100_000)
    assert torch.all(result == 3)
    assert abs(peak - 8 * 100_000) <= 64, peak


def test_peak_memory_passes_keyword_arguments_and_ignores_memory_held_before():
    held = torch.ones(1_000_000)  # 4 MB allocated before the call: not counted
    result, peak = peak_memory(torch.full, (1000,), fill_value=2.0)
    assert torch.all(result == 2) and result.shape == (1000,)
    assert abs(peak - 4 * 1000) <= 64, peak
    assert held.numel() == 1_000_000


def test_peak_memory_refuses_a_value_instead_of_a_function():
    with pytest.raises(ValueError, match="fn must be callable"):
        peak_memory(torch.ones(3))


def test_memory_depends_on_nothing_else_in_course_lib():
    tree = ast.parse(inspect.getsource(memory))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("course_lib"), ast.unparse(node)
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("course_lib") for a in node.names), ast.unparse(node)


def test_memory_held_counts_what_the_call_keeps_not_its_temporaries():
    store = []

    def keep_one(n):
        tmp = torch.ones(4 * n)  # 16n bytes, freed on return
        store.append(torch.zeros(n, dtype=torch.float64))  # 8n bytes, kept in a list the caller holds
        return tmp[:n].clone()  # 4n bytes, returned

    result, held, peak = memory.memory_held(keep_one, 10_000)
    assert result.shape == (10_000,) and len(store) == 1
    assert abs(held - (4 + 8) * 10_000) <= 64, held
    assert peak >= held + 16 * 10_000 - 64, peak
    _, nothing, _ = memory.memory_held(lambda: None)
    assert nothing == 0
    with pytest.raises(ValueError, match="fn must be callable"):
        memory.memory_held(torch.ones(3))
