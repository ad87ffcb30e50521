import argparse
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from vtbench.hashing import sha256sum
from vtbench.tokenizers.weights import (MissingWeightsError, UntrustedCheckpointError, WeightsMismatchError,
                                        load_checkpoint, load_strict, resolve_weights,
                                        unwrap_state_dict)

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


def test_safe_loading_and_trust(tmp_path):
    sd = {"w": torch.randn(3, 3)}
    st = tmp_path / "m.safetensors"
    save_file(sd, str(st))
    assert torch.equal(load_checkpoint(st)["w"], sd["w"])
    plain = tmp_path / "plain.pt"
    torch.save({"model": sd, "step": 3}, plain)
    assert torch.equal(unwrap_state_dict(load_checkpoint(plain))["w"], sd["w"])
    pickled = tmp_path / "args.pt"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4)}, pickled)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_checkpoint(pickled)
    assert load_checkpoint(pickled, trust=True)["args"].lr == 1e-4


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
