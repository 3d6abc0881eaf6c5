import inspect
import json
import sys

import pytest
import torch

from course_lib import checkpoints as C

TINY = {"config": {"n_positions": 96, "n_embd": 16, "n_layer": 1, "n_head": 2}, "steps": 3, "batch_size": 4,
        "lr": 1e-3, "seed": 0, "data": ["pretrain.jsonl"], "limit": 32}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(C.ARTEFACTS, "tiny_test", C.Artefact("tiny_test", C._pretrain, C.load_hf_model,
                                                             recipe=json.loads(json.dumps(TINY))))
    return tmp_path


@pytest.fixture()
def fresh_code_digests():
    C._code_digest_of.cache_clear()
    yield
    C._code_digest_of.cache_clear()


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- build, cache, rebuild
def test_build_once_then_reuse(cache):
    m1 = C.get("tiny_test", progress=False)
    folder = C.path("tiny_test")
    assert folder.parent == cache / "checkpoints" and (folder / "model.safetensors").exists()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # safetensors only, no pickle
    stamp = (folder / C.META).stat().st_mtime_ns
    m2 = C.get("tiny_test", progress=False)
    assert (folder / C.META).stat().st_mtime_ns == stamp  # loaded, not retrained
    for k, v in _weights(m1).items():
        assert torch.equal(v, m2.state_dict()[k])
    meta = C.info("tiny_test")
    assert meta["complete"] and len(meta["losses"]) == 3 and meta["recipe"] == TINY
    assert meta["fingerprint"] == C.fingerprint("tiny_test") and folder.name == f"tiny_test-{meta['fingerprint']}"


def test_training_is_deterministic(cache):
    m1 = _weights(C.get("tiny_test", progress=False))
    C.build("tiny_test", progress=False)
    m2 = _weights(C.get("tiny_test", progress=False))
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_meta", "bad_meta"])
def test_partial_or_corrupt_entries_are_rebuilt(cache, damage):
    good = _weights(C.get("tiny_test", progress=False))
    folder = C.path("tiny_test")
    if damage == "truncate_weights":
        w = folder / "model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "drop_meta":
        (folder / C.META).unlink()
    else:
        (folder / C.META).write_text(json.dumps({"complete": False}))
    rebuilt = _weights(C.get("tiny_test", progress=False))
    assert all(torch.equal(good[k], rebuilt[k]) for k in good)
    assert C.info("tiny_test")["complete"]
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary leftovers


def test_a_failed_build_leaves_nothing_behind(cache, monkeypatch):
    def broken(recipe, parents, out, progress):
        (out / "half-written").write_text("x")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(C.ARTEFACTS, "broken_test", C.Artefact("broken_test", broken, C.load_hf_model, recipe={}))
    with pytest.raises(RuntimeError, match="interrupted"):
        C.ensure("broken_test", progress=False)
    assert not C.path("broken_test").exists()
    assert not list((cache / "checkpoints").iterdir())


# ---------------------------------------------------------------- recipes with parameters
def test_overrides_change_the_recipe_and_the_path(cache):
    base = C.path("tiny_test")
    assert C.recipe("tiny_test", steps=4) == {**TINY, "steps": 4} and C.recipe("tiny_test") == TINY
    assert C.path("tiny_test", steps=4) != base and C.path("tiny_test", lr=2e-3) != base
    assert C.path("tiny_test", steps=3) == base  # an override equal to the recipe is the same artefact
    assert C.ARTEFACTS["tiny_test"].recipe == TINY  # the declaration is untouched


def test_a_seed_override_is_cached_separately(cache):
    m0 = _weights(C.get("tiny_test", progress=False))
    m1 = _weights(C.get("tiny_test", progress=False, seed=1))
    assert C.path("tiny_test").exists() and C.path("tiny_test", seed=1).exists()
    assert C.path("tiny_test") != C.path("tiny_test", seed=1)
    assert C.info("tiny_test", seed=1)["recipe"]["seed"] == 1
    assert any(not torch.equal(m0[k], m1[k]) for k in m0)  # another seed, another model
    again = _weights(C.get("tiny_test", progress=False))
    assert all(torch.equal(m0[k], again[k]) for k in m0)  # the seed-0 entry was not overwritten


def test_unknown_or_unserialisable_overrides_are_refused(cache):
    with pytest.raises(ValueError, match="no recipe parameter 'step'"):
        C.path("tiny_test", step=4)
    with pytest.raises(ValueError, match="plain JSON values"):
        C.recipe("tiny_test", lr=torch.tensor(1e-3))


def test_a_parents_fingerprint_is_part_of_its_childrens(cache, monkeypatch):
    monkeypatch.setitem(C.ARTEFACTS, "tiny_child", C.Artefact("tiny_child", C._pretrain, C.load_hf_model,
                                                              parents=("tiny_test",), recipe={**TINY, "steps": 2}))
    before = C.fingerprint("tiny_child")
    monkeypatch.setitem(C.ARTEFACTS, "tiny_test", C.Artefact("tiny_test", C._pretrain, C.load_hf_model,
                                                             recipe={**TINY, "steps": 5}))
    assert C.fingerprint("tiny_child") != before
    child = C.get("tiny_child", progress=False)  # builds the parent first, then continues its training
    assert C.path("tiny_test").exists() and C.info("tiny_child")["parents"] == ["tiny_test"]
    assert len(C.info("tiny_child")["losses"]) == 2 and child.config.n_embd == 16


# ---------------------------------------------------------------- the code in the fingerprint
def test_code_digest_ignores_docstrings_and_comments_but_not_code():
    a = 'def f(x):\n    """Add one."""\n    return x + 1  # the step\n'
    b = 'def f(x):\n    """Add one to x, documented at more length."""\n    # a comment of its own\n    return x + 1\n'
    c = 'def f(x):\n    """Add one."""\n    return x + 2  # the step\n'
    assert C._code_digest(a) == C._code_digest(b)
    assert C._code_digest(a) != C._code_digest(c)
    nested = '    def f(x):\n        """Add one."""\n        return x + 1\n'  # a nested function: indented
    assert C._code_digest(nested) == C._code_digest(a)
    unparsable = '    Artefact("x", lambda r: r,', '    Artefact("x", lambda r: r + 1,'  # a lambda's line, cut off
    assert C._code_digest(unparsable[0]) != C._code_digest(unparsable[1])
    mod = '"""A module docstring."""\nclass K:\n    """Doc."""\n    def m(self):\n        """Doc."""\n'
    assert C._code_digest(mod) == C._code_digest("class K:\n    def m(self):\n        pass\n")


def test_the_code_closure_covers_the_method_modules_a_builder_uses():
    functions, modules = C._code_closure(C._sft)
    assert C._sft in functions and C.load_model in functions and C.tokenizer in functions
    assert {"course_lib.sft", "course_lib.training", "course_lib.chat", "course_lib.world", "course_lib.model"} \
        <= set(modules)
    assert "course_lib.checkpoints" not in modules and "course_lib.paths" not in modules
    assert "course_lib.ppo" in C._code_closure(C._ppo)[1] and "course_lib.ppo" not in modules


def test_a_changed_method_changes_the_fingerprint_a_changed_docstring_does_not(monkeypatch, fresh_code_digests):
    before = C.code_fingerprint("sft"), C.code_fingerprint("base")
    real = inspect.getsource
    sft_module = sys.modules["course_lib.sft"]

    def edited(change):
        def getsource(obj):
            return change(real(obj)) if obj is sft_module else real(obj)
        return getsource

    monkeypatch.setattr(inspect, "getsource", edited(lambda s: s.replace('"""Supervised fine-tuning', '"""SFT')))
    C._code_digest_of.cache_clear()
    assert C.code_fingerprint("sft") == before[0]  # only a docstring changed
    monkeypatch.setattr(inspect, "getsource", edited(lambda s: s.replace("lr: float = 5e-4", "lr: float = 4e-4")))
    C._code_digest_of.cache_clear()
    assert C.code_fingerprint("sft") != before[0]  # the method changed: rebuild
    assert C.code_fingerprint("base") == before[1]  # pretraining does not use sft


# ---------------------------------------------------------------- the registry
def test_register_checks_the_declaration(monkeypatch):
    monkeypatch.setattr(C, "ARTEFACTS", dict(C.ARTEFACTS))
    ok = C.Artefact("tiny_registered", C._pretrain, C.load_hf_model, recipe=dict(TINY))
    assert C.register(ok) is ok and C.ARTEFACTS["tiny_registered"] is ok
    with pytest.raises(ValueError, match="already declared"):
        C.register(C.Artefact("base", C._pretrain, C.load_hf_model, recipe={}))
    with pytest.raises(ValueError, match="takes an Artefact"):
        C.register({"name": "x"})
    with pytest.raises(ValueError, match="not declared"):
        C.register(C.Artefact("orphan", C._pretrain, C.load_hf_model, recipe={}, parents=("nope",)))
    with pytest.raises(ValueError, match="tuple of artefact names"):
        C.register(C.Artefact("stringly", C._pretrain, C.load_hf_model, recipe={}, parents="base"))
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        C.register(C.Artefact("../escape", C._pretrain, C.load_hf_model, recipe={}))
    with pytest.raises(ValueError, match="must be functions"):
        C.register(C.Artefact("no_loader", C._pretrain, None, recipe={}))
    with pytest.raises(ValueError, match="recipe must be a dict"):
        C.register(C.Artefact("bad_recipe", C._pretrain, C.load_hf_model, recipe=[1]))


def test_the_course_artefacts_are_declared_once_with_their_parents():
    for name, a in C.ARTEFACTS.items():
        assert a.name == name and all(p in C.ARTEFACTS for p in a.parents) and a.doc
    assert C.ARTEFACTS["sft"].parents == ("base",) and C.recipe("sft")["model"] is None
    assert C.ARTEFACTS["ppo"].parents == ("reward_model", "sft")


def test_clear_errors(cache, tmp_path):
    with pytest.raises(ValueError, match="unknown artefact 'nope'"):
        C.get("nope")
    with pytest.raises(ValueError, match="unknown artefact 'nope'"):
        C.fingerprint("nope")
    with pytest.raises(FileNotFoundError, match="neither a course artefact"):
        C.load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        C.load_model(str(tmp_path / "empty"))


def test_the_command_line_builds_named_artefacts_and_refuses_unknown_ones(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(C, "ensure", lambda name, progress=True: built.append((name, progress)) or f"/cache/{name}")
    assert C.main(["sft", "base"]) == 0 and built == [("sft", False), ("base", False)]
    assert "sft" in capsys.readouterr().out
    built.clear()
    with pytest.raises(ValueError, match="unknown artefact 'nope'"):
        C.main(["sft", "nope"])
    assert built == []  # nothing is trained when any name is wrong


def test_prepare_reports_every_artefact_and_the_total(capsys):
    from course_lib import prepare
    assert prepare.main(["preferences"]) == 0
    out = capsys.readouterr().out
    assert "preferences" in out and "1 artefacts ready in" in out
    with pytest.raises(ValueError, match="unknown artefact"):
        prepare.main(["no_such_artefact"])
