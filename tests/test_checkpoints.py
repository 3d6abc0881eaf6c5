import json

import pytest
import torch

from course_lib import checkpoints as C

TINY = {"kind": "pretrain", "config": {"n_positions": 96, "n_embd": 16, "n_layer": 1, "n_head": 2},
        "steps": 3, "batch_size": 4, "lr": 1e-3, "seed": 0, "data": ["pretrain.jsonl"], "limit": 32}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(C.RECIPES, "tiny_test", dict(TINY))
    return tmp_path


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


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
    assert meta["complete"] and len(meta["losses"]) == 3


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
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary leftovers


def test_a_changed_recipe_gets_a_new_entry(cache):
    a = C.path("tiny_test")
    C.RECIPES["tiny_test"]["steps"] = 4
    assert C.path("tiny_test") != a


def test_a_failed_build_leaves_nothing_behind(cache, monkeypatch):
    def broken(recipe, out, progress=True):
        (out / "half-written").write_text("x")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(C._BUILDERS, "pretrain", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        C.ensure("tiny_test", progress=False)
    assert not C.path("tiny_test").exists()
    assert not list((cache / "checkpoints").iterdir())


def test_clear_errors(cache, tmp_path):
    with pytest.raises(ValueError, match="unknown artefact 'nope'"):
        C.get("nope")
    with pytest.raises(FileNotFoundError, match="neither a course artefact"):
        C.load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        C.load_model(str(tmp_path / "empty"))
