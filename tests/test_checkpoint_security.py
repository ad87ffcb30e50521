"""Hostile checkpoints: nothing a file names is ever resolved or run without --trust-checkpoint.

The corpus (tests/hostile_checkpoints.py) is generated opcode by opcode. Every payload would create a marker file
or change a victim file if it ran; each test checks that neither happened and that no file in the temporary
folder other than the checkpoints changed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
from pathlib import Path

import hostile_checkpoints as hc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtbench.tokenizers import safe_pickle
from vtbench.tokenizers.safe_pickle import ALLOWED, RefusedCheckpoint, read_zip_inert
from vtbench.tokenizers.weights import (
    UntrustedCheckpointError,
    WeightsMismatchError,
    convert_to_safetensors,
    load_official_checkpoint,
)

REFUSALS = (UntrustedCheckpointError, WeightsMismatchError)


class Folder:
    """The temporary folder's files (name -> bytes) before and after a load."""

    def __init__(self, root: Path):
        self.root = root
        self.marker = root / "marker"
        self.victim = root / "victim.bin"
        self.victim.write_bytes(b"12345")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}

    def write(self, name: str, data: bytes) -> Path:
        p = self.root / name
        p.write_bytes(data)
        self.before[name] = data
        return p

    def untouched(self) -> None:
        assert not self.marker.exists(), f"payload ran: {self.marker.read_text()}"
        assert self.victim.read_bytes() == b"12345"
        assert self.snapshot() == self.before


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path)


def _load(path: Path):
    """The loader as every adapter calls it, without trust: an inert read or a refusal."""
    try:
        return load_official_checkpoint(path, inert=True)
    except REFUSALS as exc:
        return exc


NAMES = sorted(hc.payloads("m", "v"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("header", [False, True], ids=["plain-pickle", "legacy-header"])
def test_legacy_pickles_are_refused_and_nothing_runs(folder, name, header):
    """Plain pickles (torch's legacy format without a header) and legacy files with a valid header, with
    REDUCE/INST/OBJ/NEWOBJ/BUILD payloads: refused (legacy files are never read inertly), nothing runs."""
    payload = hc.payloads(str(folder.marker), str(folder.victim))[name]
    got = _load(folder.write("evil.pt", hc.legacy_file(payload) if header else payload))
    assert isinstance(got, REFUSALS), got
    if header:
        assert isinstance(got, UntrustedCheckpointError) and got.rule in ("legacy-format", "weights-only")
        assert "runs arbitrary code" in str(got)
    folder.untouched()


def test_forged_legacy_header_is_refused(folder):
    got = _load(folder.write("forged.pth", hc.forged_header_file(str(folder.marker))))
    assert isinstance(got, REFUSALS), got
    folder.untouched()


@pytest.mark.parametrize("name", NAMES)
def test_zip_payloads_are_read_inertly_or_refused(folder, name):
    payload = hc.payloads(str(folder.marker), str(folder.victim))[name]
    got = _load(folder.write("evil.bin", hc.zip_checkpoint(payload)))
    if isinstance(got, REFUSALS):
        assert "Nothing from the file was run" in str(got) and "--trust-checkpoint runs arbitrary code" in str(got)
    else:
        assert got.mode == "inert" and got.stubbed_globals  # every placeholder is listed
    folder.untouched()
    # the inert reader on its own (not behind torch's weights-only attempt) gives the same
    try:
        read_zip_inert(str(folder.root / "evil.bin"))
    except RefusedCheckpoint:
        pass
    folder.untouched()


def test_storage_exception_attacks_are_refused_by_rule(folder):
    """Main let globals whose module starts with torch and whose name contains 'Storage' through."""
    p = hc.payloads(str(folder.marker), str(folder.victim))
    for name in ("dotted-global-getter", "dotted-global-from-file", "dotted-global-text"):
        got = _load(folder.write(f"{name}.pt", hc.zip_checkpoint(p[name])))
        assert isinstance(got, UntrustedCheckpointError) and got.rule == "dotted-global", (name, got)
    got = _load(folder.write("called.pt", hc.zip_checkpoint(p["storage-type-called"])))
    assert isinstance(got, UntrustedCheckpointError) and got.rule == "reduce"
    folder.untouched()


def test_placeholders_are_listed_in_provenance(folder):
    p = hc.payloads(str(folder.marker), str(folder.victim))
    got = _load(folder.write("nested.pt", hc.zip_checkpoint(p["nested-load-from-bytes"])))
    assert got.mode == "inert" and got.stubbed_globals == ["torch.storage._load_from_bytes"]
    assert "inert" in repr(got.obj) and got.info()["stubbed_globals"] == ["torch.storage._load_from_bytes"]
    got = _load(folder.write("chain.pt", hc.zip_checkpoint(p["getattr-chain"])))
    assert got.stubbed_globals == ["builtins.getattr", "os.path"]
    folder.untouched()


@pytest.mark.parametrize("name", sorted(hc.persistent_id_cases("m")))
def test_persistent_ids_and_entries_outside_the_archive_are_refused(folder, name):
    data = hc.persistent_id_cases(str(folder.marker))[name]
    with pytest.raises(RefusedCheckpoint) as info:
        read_zip_inert(str(folder.write("p.pt", data)))
    assert info.value.rule in ("persistent-id", "tensor", "zip-path", "malformed")
    assert isinstance(_load(folder.root / "p.pt"), REFUSALS)
    folder.untouched()


def test_well_formed_storage_reference_reads(folder):
    """The same hand-written stream with a key inside the archive reads (the refusals above are specific)."""
    import struct
    data = hc.zip_checkpoint(hc.end(hc.proto(), pickle.EMPTY_DICT, hc.s("w"), hc.tensor("0", 4, (2,), (2,), 1),
                                    pickle.SETITEM), storages={"0": struct.pack("<4f", 1, 2, 3, 4)})
    got = read_zip_inert(str(folder.write("ok.pt", data)))
    assert got.obj["w"].tolist() == [2.0, 4.0] and got.stubbed == []


def test_control_trust_runs_the_payload(folder):
    """The corpus is live: the same file does run its code when the user trusts it (why the flag warns)."""
    payload = hc.payloads(str(folder.marker), str(folder.victim))["reduce-trap"]
    path = folder.write("evil.pt", hc.legacy_file(payload))
    with pytest.raises(UntrustedCheckpointError):
        load_official_checkpoint(path, inert=True)
    assert not folder.marker.exists()
    try:
        load_official_checkpoint(path, trust=True)
    except Exception:  # noqa: BLE001 - what happens after the payload ran does not matter here
        pass
    assert folder.marker.exists()


def test_allowlist_is_exact_and_owns_its_callables():
    """Exact (module, name) pairs; every callable is vtbench's own (argument-checked) or argparse.Namespace."""
    for (module, name), value in ALLOWED.items():
        assert "." not in name and module and name
        if callable(value) and not isinstance(value, torch.dtype):
            assert value is argparse.Namespace or value.__module__ == safe_pickle.__name__, (module, name, value)
    assert ("torch", "UntypedStorage") in ALLOWED and not callable(ALLOWED[("torch", "UntypedStorage")])
    assert ("torch.storage", "_load_from_bytes") not in ALLOWED


class _Callback:
    def __init__(self, monitor):
        self.monitor = monitor


def test_real_checkpoint_reads_exactly(folder):
    """A Lightning-style file (objects beside the weights) reads inertly with every tensor exact: dtypes, views,
    offsets, transposes, tied weights, parameters and the state dict's _metadata."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))
    sd = net.state_dict()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {"half": torch.randn(5).half(), "bf16": torch.randn(3, 2).bfloat16(), "bool": torch.tensor([True, False]),
               "long": torch.arange(7), "view": base[1:3, 2:5], "t": base.t(), "tied": base,
               "param": torch.nn.Parameter(torch.ones(2)), "empty": torch.zeros(0, 3), "scalar": torch.tensor(3.5),
               "u16": torch.arange(4).to(torch.uint16)}
    obj = {"state_dict": sd, "tensors": tensors, "cb": _Callback("loss"), "callbacks": {_Callback: {"n": 1}},
           "args": argparse.Namespace(lr=0.1), "set": {1, 2}, "bytes": b"\x00\xff", "cplx": 1 + 2j}
    path = folder.root / "real.ckpt"
    torch.save(obj, path)
    folder.before = folder.snapshot()
    got = load_official_checkpoint(path, inert=True)
    assert got.mode == "inert" and got.stubbed_globals == [f"{__name__}._Callback"]
    for k, v in sd.items():
        assert torch.equal(got.obj["state_dict"][k], v)
    assert got.obj["state_dict"]._metadata == sd._metadata
    for k, v in tensors.items():
        out = got.obj["tensors"][k]
        assert out.dtype == v.dtype and out.shape == v.shape and torch.equal(out, v.detach()), k
    assert (got.obj["tensors"]["tied"].untyped_storage().data_ptr()
            == got.obj["tensors"]["view"].untyped_storage().data_ptr())
    assert got.obj["args"].lr == 0.1 and got.obj["set"] == {1, 2} and got.obj["bytes"] == b"\x00\xff"
    assert got.obj["cplx"] == 1 + 2j and "inert" in repr(got.obj["cb"])
    folder.untouched()


def test_convert_once_then_load_safely(folder):
    """`weights convert` (trusted once) writes safetensors; loading it never unpickles, keeps the wrappers."""
    sd = {"enc.w": torch.randn(3, 3), "dec.b": torch.randn(2)}
    path = folder.root / "m.ckpt"
    torch.save({"ema": sd, "model": {"enc.w": sd["enc.w"] * 0}, "cb": _Callback("x"), "step": 4}, path)
    out = folder.root / "m.safetensors"
    summary = convert_to_safetensors(path, out, trust=True)
    assert summary["load_mode"] == "trusted" and summary["tensors"] == 3 and summary["skipped_non_tensor"] == 2
    got = load_official_checkpoint(out)
    assert got.mode == "safetensors" and got.converted_from["sha256"] == summary["source_sha256"]
    assert torch.equal(got.obj["ema"]["enc.w"], sd["enc.w"]) and torch.equal(got.obj["model"]["enc.w"], sd["enc.w"] * 0)
    # without trust the same file converts through the inert reader
    summary2 = convert_to_safetensors(path, folder.root / "m2.safetensors")
    assert summary2["load_mode"] == "inert" and summary2["tensors"] == 3


def test_converted_copy_is_found_beside_the_card_file(tmp_path, monkeypatch):
    from vtbench.tokenizers.weights import resolve_weights
    (tmp_path / "vq_ds16_c2i.pt").write_bytes(b"x")
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    assert resolve_weights({"file": "vq_ds16_c2i.pt"}).name == "vq_ds16_c2i.pt"
    (tmp_path / "vq_ds16_c2i.safetensors").write_bytes(b"x")
    assert resolve_weights({"file": "vq_ds16_c2i.pt"}).name == "vq_ds16_c2i.safetensors"


# -- fuzz -------------------------------------------------------------------------------------------------------
DANGEROUS = [("builtins", "open"), ("builtins", "exec"), ("builtins", "eval"), ("os", "system"), ("posix", "system"),
             ("builtins", "getattr"), ("torch.storage", "_load_from_bytes"), ("torch", "load"), hc.TRAP,
             ("torch", "UntypedStorage.from_file"), ("torch.storage", "TypedStorage.__init__.__globals__.get"),
             ("torch", "UntypedStorage"), ("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2"),
             ("collections", "OrderedDict"), ("argparse", "Namespace"), ("copyreg", "_reconstructor"),
             ("builtins", "set"), ("_codecs", "encode"), ("torch", "Size"), ("shutil", "rmtree")]


def _ops(marker: str, victim: str):
    strings = st.sampled_from([marker, victim, "w", f"touch {marker}", f"open({marker!r},'w')", "storage", "0",
                               "latin1", "_load_from_bytes"])
    simple = st.sampled_from([pickle.MARK, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.EMPTY_DICT,
                              pickle.EMPTY_LIST, pickle.EMPTY_TUPLE, pickle.SETITEM, pickle.SETITEMS, pickle.APPEND,
                              pickle.APPENDS, pickle.REDUCE, pickle.BUILD, pickle.NEWOBJ, pickle.NEWOBJ_EX,
                              pickle.OBJ, pickle.BINPERSID, pickle.MEMOIZE, pickle.POP, pickle.DUP, pickle.NONE,
                              pickle.NEWTRUE, pickle.STACK_GLOBAL, pickle.FROZENSET, pickle.EMPTY_SET,
                              pickle.ADDITEMS, pickle.BINGET + b"\x00"])
    return st.one_of(
        simple,
        strings.map(hc.s),
        st.integers(-2, 1 << 20).map(hc.i),
        st.sampled_from(DANGEROUS).map(lambda mn: hc.glob(*mn)),
        st.sampled_from(DANGEROUS).map(lambda mn: hc.stack_glob(*mn)),
        st.sampled_from(DANGEROUS).map(lambda mn: pickle.INST + f"{mn[0]}\n{mn[1]}\n".encode()),
        st.binary(max_size=6),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_opcode_streams_never_run_anything(tmp_path, data):
    marker, victim = tmp_path / "marker", tmp_path / "victim.bin"
    victim.write_bytes(b"12345")
    ops = data.draw(st.lists(_ops(str(marker), str(victim)), max_size=40))
    stream = hc.proto(data.draw(st.sampled_from([2, 4]))) + b"".join(ops) + pickle.STOP
    archive = hc.zip_checkpoint(stream, storages={"0": b"\x00" * 16})
    try:
        read_zip_inert(io.BytesIO(archive))
    except RefusedCheckpoint:
        pass
    assert not marker.exists() and victim.read_bytes() == b"12345"
    assert os.listdir(tmp_path) == ["victim.bin"]


def test_fuzz_would_see_a_payload(tmp_path):
    """The fuzz's assertion is reachable: an unrestricted unpickler runs the same kind of stream."""
    marker = tmp_path / "marker"
    stream = hc.end(hc.proto(), hc.call(hc.glob("builtins", "open"), hc.s(str(marker)), hc.s("w")))
    pickle.loads(stream).close()
    assert marker.exists()
    marker.unlink()
    got = safe_pickle.InertUnpickler(io.BytesIO(stream), lambda pid: None).load()
    assert isinstance(got, safe_pickle.Inert) and got.args == (str(marker), "w") and not marker.exists()


def test_cli_weights_convert_then_run_loads_without_trust(tmp_path):
    """`vtbench weights convert FILE --trust-checkpoint` once; the safetensors copy then loads with no flag."""
    from typer.testing import CliRunner

    from vtbench.cli import app
    sd = {"w": torch.randn(2, 2)}
    src = tmp_path / "m.ckpt"
    torch.save({"state_dict": sd, "cb": _Callback("x")}, src)
    r = CliRunner().invoke(app, ["weights", "convert", str(src), "--json"])  # inert read: no trust needed
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["load_mode"] == "inert" and Path(summary["output"]) == tmp_path / "m.safetensors"
    got = load_official_checkpoint(tmp_path / "m.safetensors")
    assert got.mode == "safetensors" and torch.equal(got.obj["state_dict"]["w"], sd["w"])
    evil = tmp_path / "evil.pt"
    evil.write_bytes(hc.legacy_file(hc.payloads(str(tmp_path / "marker"), "v")["reduce-open"]))
    r = CliRunner().invoke(app, ["weights", "convert", str(evil)])
    assert r.exit_code == 1 and "legacy-format" in r.output and not (tmp_path / "marker").exists()
