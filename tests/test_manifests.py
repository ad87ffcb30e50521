"""Every committed key manifest (parameter names and shapes of an official checkpoint, dumped from the official
code) goes through its adapter's own unwrap / drop / remap path and matches the full-size architecture exactly.

Built on the meta device, so the 2.9B-parameter GigaTok XL-XXL is checked without allocating its weights."""

from __future__ import annotations

import pytest
import torch

from vtbench.config import all_cards, get_card
from vtbench.paths import CARDS_DIR
from vtbench.registry import load_object
from vtbench.tokenizers.official import CheckpointTokenizer, check_manifest, load_manifest, manifest_checkpoint

MANIFESTS = sorted((CARDS_DIR / "manifests").glob("*.json"))


def test_every_official_card_has_a_manifest():
    names = {p.stem for p in MANIFESTS}
    for name, card in all_cards().items():
        cls = load_object(card.entry)
        if isinstance(cls, type) and issubclass(cls, CheckpointTokenizer):
            # a rate sweep's settings share the weights (and so the manifest) of their group variant
            group = card.sweep_group or name
            assert group in names, f"{card.card_path}: {name} has no tokenizers/manifests/{group}.json"


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_manifest_matches_architecture(path):
    manifest = load_manifest(path)
    assert manifest.get("source") and manifest.get("keys"), f"{path}: needs source and keys"
    card = get_card(path.stem)
    cls = load_object(card.entry)
    with torch.device("meta"):
        model = cls.build_model(dict(card.params))
    state, ext = cls.state_from_object(manifest_checkpoint(manifest), dict(card.params), source=str(path))
    check_manifest(model, state, source=str(path))
    dropped = sorted(ext.dropped)
    assert dropped == sorted(manifest.get("dropped_prefixes", [])), (
        f"{path}: the adapter drops {dropped}, the manifest lists {manifest.get('dropped_prefixes')}")


WITH_WEIGHTS = sorted(n for n, c in all_cards().items() if c.weights and not c.weights.get("bundled"))


@pytest.mark.parametrize("name", WITH_WEIGHTS)
def test_missing_official_weights_are_actionable(name, monkeypatch):
    """No weights here and offline: the error names the file, where it comes from and how to place it."""
    from vtbench.tokenizers import build_tokenizer
    from vtbench.tokenizers.weights import MissingWeightsError
    monkeypatch.delenv("VTBENCH_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_card(name).weights
    with pytest.raises(MissingWeightsError) as exc:
        build_tokenizer(name)
    msg = str(exc.value)
    assert name in msg and spec["file"] in msg and "fix:" in msg and "--weights" in msg and "VTBENCH_WEIGHTS" in msg
    assert (spec.get("url") or spec["hub_repo"]) in msg or spec.get("hub_repo", "\0") in msg
    if spec.get("directory"):  # a model folder: the exact download command
        assert "huggingface-cli download" in msg
    if spec.get("gated"):
        assert "gated" in msg
