"""course_lib's shape, read from the source with ast: imports at the top, no private reach-ins, no cycles,
and the layers DESIGN.md draws (mechanisms -> model -> world -> methods -> checkpoints -> tools)."""
import ast
from pathlib import Path

import pytest

import course_lib

PACKAGE = Path(course_lib.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))

MECHANISMS = {"attention", "kv_cache", "flash", "memory", "positions", "decode"}
METHODS = {"sft", "preferences", "reward_model", "ppo", "grpo", "dpo", "cai", "metrics", "trl_bridge"}
TOOLS = {"checkpoints", "comparison", "paths", "run", "report", "bench", "doctor", "viz", "prepare", "exercises", "site",
         "launch_dpo"}  # what no method may import
PATHS_USERS = {"__init__", "data", "checkpoints", "run", "bench", "doctor", "report", "site"}  # who may know where files live
ALLOWED = {  # module -> the only course_lib modules it may import
    **{m: MECHANISMS - {m} for m in MECHANISMS},
    "model": MECHANISMS,
    "world": set(),
    "data": {"world", "paths"},
    "chat": MECHANISMS | {"model", "world", "training"},
    "training": MECHANISMS | {"model", "world"},
}


def _tree(module):
    return ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"course_lib/{module}.py")


def _resolve(module, node):
    """The course_lib modules an import node names: [(module name, [imported names])]."""
    if isinstance(node, ast.Import):
        return [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("course_lib.")]
    if node.level == 0 and not (node.module or "").startswith("course_lib"):
        return []
    if node.level > 1:
        return []
    parts = (node.module or "").split(".")
    if node.level == 0:
        parts = parts[1:]  # "course_lib.x" -> ["x"]
    if parts and parts[0]:
        return [(parts[0], [a.name for a in node.names])]
    return [(a.name, []) for a in node.names if a.name in MODULES]  # from . import x, y


def _course_imports(module):
    """{course_lib module: [names imported from it]} for one module's imports."""
    out = {}
    for node in ast.walk(_tree(module)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for dep, names in _resolve(module, node):
                out.setdefault(dep, []).extend(names)
    return out


GRAPH = {m: set(_course_imports(m)) for m in MODULES}


def test_the_parser_sees_the_package():
    assert {"attention", "model", "world", "chat", "training", "checkpoints", "cai"} <= set(MODULES)
    assert GRAPH["model"] >= {"attention", "kv_cache"}  # the reader finds real imports
    assert "world" in GRAPH["chat"] and "chat" in GRAPH["dpo"]


def _hidden_imports(tree):
    """Import statements inside a function or class body: ["line N in f()", ...]."""
    hidden = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    hidden.append(f"line {inner.lineno} in {node.name}()")
    return hidden


def _private_imports(imports):
    """"dep._name" for each underscore name imported from another course_lib module."""
    return [f"{dep}.{n}" for dep, names in imports.items() for n in names if n.startswith("_")]


def _cycles(graph):
    """Each import cycle of a {module: {modules it imports}} graph, as a path [a, b, ..., a]."""
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


@pytest.mark.parametrize("module", MODULES)
def test_imports_sit_at_the_top_of_each_file(module):
    """No import inside a function or class: a dependency is visible in the file's first lines. (doctor imports
    torch through importlib.import_module on purpose, to report a broken install: a call, not a statement.)"""
    hidden = _hidden_imports(_tree(module))
    assert not hidden, f"course_lib/{module}.py imports inside a function or class: {hidden}; move them to the top"


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_another_modules_private_names(module):
    private = _private_imports(_course_imports(module))
    assert not private, f"course_lib/{module}.py imports private names {private}; make them public or move them"


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles among course_lib modules: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_lower_layers_import_only_below_them(module):
    extra = GRAPH[module] - ALLOWED[module]
    assert not extra, (f"course_lib/{module}.py imports {sorted(extra)}, but its layer may import only "
                       f"{sorted(ALLOWED[module]) or 'no course_lib module'}")


@pytest.mark.parametrize("module", sorted(METHODS))
def test_methods_do_not_know_artefacts_files_or_tools(module):
    extra = GRAPH[module] & TOOLS
    assert not extra, (f"method module course_lib/{module}.py imports {sorted(extra)}; methods take models and data "
                       "as arguments, only checkpoints knows artefacts by name and files by path")


@pytest.mark.parametrize("module", sorted(set(MODULES) - PATHS_USERS))
def test_only_the_tools_know_where_files_live(module):
    assert "paths" not in GRAPH[module], (f"course_lib/{module}.py imports paths; only {sorted(PATHS_USERS)} may "
                                          "(pass folders in as arguments instead)")


def test_nothing_below_the_tools_imports_a_tool():
    """checkpoints sits on the methods; run, report, bench, doctor and viz on top: nothing else imports them."""
    lower = set(ALLOWED) | METHODS
    for module in sorted(lower):
        extra = GRAPH[module] & (TOOLS - {"paths"})
        assert not extra, f"course_lib/{module}.py imports {sorted(extra)}, a layer above it"


def test_the_checks_catch_a_violation():
    """The reader itself is checked on made-up modules: each rule fires when it should."""
    tree = ast.parse("import torch\nfrom .world import _secret, gold_reward\n\n"
                     "def f():\n    from . import chat\n\nclass C:\n    import course_lib.model\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [r for n in nodes for r in _resolve("x", n)] == [("world", ["_secret", "gold_reward"]), ("chat", []),
                                                             ("model", [])]
    assert _hidden_imports(tree) == ["line 5 in f()", "line 8 in C()"]
    assert _hidden_imports(ast.parse("import os\n\ndef f():\n    return os.sep\n")) == []
    assert _private_imports({"world": ["_secret", "gold_reward"], "chat": []}) == ["world._secret"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
