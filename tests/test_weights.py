import argparse
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from vtbench.hashing import sha256sum
from vtbench.tokenizers.weights import (
    MissingWeightsError,
    UntrustedCheckpointError,
    WeightsMismatchError,
    extract_state_dict,
    load_checkpoint,
    load_official_checkpoint,
    load_strict,
    rename_keys,
    resolve_weights,
    unwrap_state_dict,
)

SPEC = {"file": "model.pt", "sha256": "ab" * 32, "url": "https://example.org/model.pt"}


def test_missing_weights_error_is_actionable(monkeypatch):
    monkeypatch.delenv("VTBENCH_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as ei:
        resolve_weights(SPEC, name="fam.v")
    msg = str(ei.value)
    for part in ("model.pt", "https://example.org/model.pt", "ab" * 32, "VTBENCH_WEIGHTS", "--weights"):
        assert part in msg


def test_resolution_order(tmp_path, monkeypatch):
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "model.pt").write_bytes(b"x")
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"y")
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(wdir))
    assert resolve_weights(SPEC) == wdir / "model.pt"
    assert resolve_weights(SPEC, explicit) == explicit
    assert resolve_weights(SPEC, wdir) == wdir / "model.pt"  # a directory: the card's file name inside it
    with pytest.raises(MissingWeightsError, match="does not exist"):
        resolve_weights(SPEC, tmp_path / "nope.pt")


def test_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"vtbench" * 1000)
    assert sha256sum(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert sha256sum(p) == hashlib.sha256(p.read_bytes()).hexdigest()  # memoised path


class _Callback:  # stands for a training framework's object pickled into a checkpoint
    ran = []

    def __init__(self, monitor):
        self.monitor = monitor

    def __reduce__(self):  # a hostile pickle would run code here on load
        return (_Callback._touch, ("ran",))

    @staticmethod
    def _touch(tag):
        _Callback.ran.append(tag)
        return tag


def test_safe_loading_and_trust(tmp_path):
    sd = {"w": torch.randn(3, 3)}
    st = tmp_path / "m.safetensors"
    save_file(sd, str(st))
    assert torch.equal(load_checkpoint(st)["w"], sd["w"])
    plain = tmp_path / "plain.pt"
    torch.save({"model": sd, "step": 3}, plain)
    assert torch.equal(unwrap_state_dict(load_checkpoint(plain))["w"], sd["w"])
    # training arguments (argparse.Namespace) are plain data: allow-listed
    args = tmp_path / "args.pt"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4)}, args)
    assert load_checkpoint(args)["args"].lr == 1e-4
    # anything else needs trust, or the inert loader that never runs it
    pickled = tmp_path / "obj.pt"
    torch.save({"model": sd, "callbacks": {_Callback: {"best": torch.tensor(1.0)}}, "cb": _Callback("loss")}, pickled)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_checkpoint(pickled)
    _Callback.ran.clear()
    got = load_official_checkpoint(pickled, inert=True)
    assert got.mode == "inert" and _Callback.ran == []  # nothing from the file ran
    assert any(g.endswith("_Callback") for g in got.stubbed_globals)
    assert any(g.endswith("getattr") for g in got.stubbed_globals)  # the reduce call never ran
    assert torch.equal(got.obj["model"]["w"], sd["w"])
    assert "inert" in repr(got.obj["cb"])
    assert load_checkpoint(pickled, trust=True)["cb"] == "ran" and _Callback.ran == ["ran"]


def test_extract_state_dict_wrappers_drops_and_renames():
    sd = {"encoder.w": torch.zeros(2), "loss.disc.w": torch.ones(3), "loss.lpips.w": torch.ones(1),
          "module.decoder.b": torch.ones(1)}
    ext = extract_state_dict({"state_dict": sd, "epoch": 3, "optimizer_states": [{}]}, drop_prefixes=("loss.",),
                             strip_prefixes=("module.",))
    assert ext.wrapper == "state_dict" and set(ext.state) == {"encoder.w", "decoder.b"}
    assert ext.dropped == {"loss.": 2}
    assert extract_state_dict({"ema": {"a": torch.zeros(1)}, "model": {"a": torch.ones(1)}}).wrapper == "ema"
    assert extract_state_dict({"model": {"a": torch.ones(1)}}, prefer=("model",)).state["a"].item() == 1
    assert extract_state_dict(sd).wrapper is None  # a raw state dict
    with pytest.raises(WeightsMismatchError, match="no state dict"):
        extract_state_dict({"optimizer": {"x": 1}}, source="f.pt")
    out = rename_keys({"a.0.w": 1, "a.1.w": 2, "b": 3}, [(r"a\.(\d+)\.", lambda m: f"c.{int(m.group(1)) + 1}.")])
    assert out == {"c.1.w": 1, "c.2.w": 2, "b": 3}
    with pytest.raises(WeightsMismatchError, match="collision"):
        rename_keys({"a": 1, "b": 2}, [(r"a|b", "c")])


def test_unwrap_prefers_ema():
    a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert unwrap_state_dict({"ema": a, "model": b})["w"].item() == 0
    assert unwrap_state_dict({"state_dict": b})["w"].item() == 1
    with pytest.raises(WeightsMismatchError):
        unwrap_state_dict({"optimizer": 3})


def test_load_strict_names_the_problem():
    m = torch.nn.Linear(2, 3)
    good = {k: v.clone() for k, v in m.state_dict().items()}
    load_strict(m, good, source="f.pt")
    with pytest.raises(WeightsMismatchError, match=r"f\.pt.*missing"):
        load_strict(m, {"weight": good["weight"]}, source="f.pt")
    with pytest.raises(WeightsMismatchError, match="shape"):
        load_strict(m, {"weight": torch.zeros(3, 3), "bias": good["bias"]}, source="f.pt")
