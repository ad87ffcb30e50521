"""A corpus of hostile checkpoints, generated (never stored as binaries) for the checkpoint-security tests.

Each payload, if anything resolved or ran what it names, creates ``marker`` (a path in the test's temporary
folder) or changes ``victim`` (a 5-byte file there). Pickles are written opcode by opcode so that the corpus
holds exactly the streams an attacker would write, including ones ``pickle.dumps`` never produces (dotted
protocol-4 names, forged legacy headers, persistent ids outside the archive).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy-format magic number


class Trap:
    """Creates its marker whenever any of its code runs (construction, state, call)."""

    def __new__(cls, marker: str = "", *args, **kwargs):
        if marker:
            Path(marker).write_text("Trap.__new__ ran")
        return object.__new__(cls)

    def __init__(self, marker: str = "", *args, **kwargs):
        if marker:
            Path(marker).write_text("Trap.__init__ ran")

    def __setstate__(self, state):
        if isinstance(state, dict) and state.get("marker"):
            Path(state["marker"]).write_text("Trap.__setstate__ ran")


# -- opcode writers ------------------------------------------------------------------------------------------
def proto(n: int = 2) -> bytes:
    return pickle.PROTO + bytes([n])


def s(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def b(data: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n"


def stack_glob(module: str, name: str) -> bytes:
    return s(module) + s(name) + pickle.STACK_GLOBAL


def tup(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + pickle.REDUCE


def end(*parts: bytes) -> bytes:
    return b"".join(parts) + pickle.STOP


TRAP = ("hostile_checkpoints", "Trap")


def payloads(marker: str, victim: str) -> dict[str, bytes]:
    """Named pickle streams; each would create ``marker`` or change ``victim`` if it were run."""
    m = s(marker)
    nested = b(legacy_file(end(proto(), call(glob("builtins", "open"), m, s("w")))))  # run by torch.load if reached
    return {
        "reduce-open": end(proto(), call(glob("builtins", "open"), m, s("w"))),
        "reduce-os-system": end(proto(), call(glob("os", "system"), s(f"touch {marker}"))),
        "reduce-posix-system": end(proto(), call(glob("posix", "system"), s(f"touch {marker}"))),
        "reduce-exec": end(proto(), call(glob("builtins", "exec"), s(f"open({marker!r}, 'w')"))),
        "reduce-trap": end(proto(), call(glob(*TRAP), m)),
        "inst-open": end(pickle.MARK, m, s("w"), pickle.INST, b"builtins\nopen\n"),
        "inst-trap": end(pickle.MARK, m, pickle.INST, TRAP[0].encode() + b"\n" + TRAP[1].encode() + b"\n"),
        "obj-open": end(proto(), pickle.MARK, glob("builtins", "open"), m, s("w"), pickle.OBJ),
        "obj-trap": end(proto(), pickle.MARK, glob(*TRAP), m, pickle.OBJ),
        "newobj-trap": end(proto(), glob(*TRAP), tup(m), pickle.NEWOBJ),
        "newobj-ex-trap": end(proto(4), glob(*TRAP), tup(m), pickle.EMPTY_DICT, pickle.NEWOBJ_EX),
        "build-trap": end(proto(), glob(*TRAP), tup(), pickle.NEWOBJ, pickle.EMPTY_DICT, s("marker"), m,
                          pickle.SETITEM, pickle.BUILD),
        "dotted-global-getter": end(proto(4), call(call(
            stack_glob("torch.storage", "TypedStorage.__init__.__globals__.get"), s("_load_from_bytes")), nested)),
        "dotted-global-from-file": end(proto(4), call(stack_glob("torch", "UntypedStorage.from_file"),
                                                       s(victim), pickle.NEWTRUE, i(1 << 20))),
        "dotted-global-text": end(proto(), call(glob("torch", "UntypedStorage.from_file"),
                                                s(victim), pickle.NEWTRUE, i(1 << 20))),
        "storage-type-called": end(proto(), call(glob("torch", "UntypedStorage"), i(16))),
        "nested-load-from-bytes": end(proto(), call(glob("torch.storage", "_load_from_bytes"), nested)),
        "getattr-chain": end(proto(), call(call(glob("builtins", "getattr"), glob("os", "path"), s("join")),
                                           m, s("x"))),
        "copyreg-reconstructor": end(proto(), call(glob("copyreg", "_reconstructor"), glob(*TRAP),
                                                   glob("builtins", "object"), m)),
    }


def legacy_file(payload: bytes, *, header: bytes | None = None) -> bytes:
    """A torch legacy-format file: magic number, protocol, system info, then ``payload`` as the object."""
    if header is None:
        header = (pickle.dumps(MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
                  + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    return header + payload + pickle.dumps([], protocol=2)


def forged_header_file(marker: str) -> bytes:
    """A legacy file whose *magic number* pickle is the payload: torch reads the header before anything else."""
    evil = end(proto(), call(glob("builtins", "open"), s(marker), s("w")))
    return legacy_file(b"", header=evil)


def zip_checkpoint(data_pkl: bytes, *, storages: dict[str, bytes] | None = None, extra: dict[str, bytes] | None = None,
                   archive: str = "archive") -> bytes:
    """A torch zip checkpoint holding ``data_pkl`` (and storages under ``data/<key>``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", data_pkl)
        zf.writestr(f"{archive}/byteorder", b"little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"{archive}/data/{key}", raw)
        zf.writestr(f"{archive}/version", b"3\n")
        for name, raw in (extra or {}).items():
            zf.writestr(name, raw)
    return buf.getvalue()


def persistent(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    """A BINPERSID storage reference as torch writes it: ('storage', torch.<storage>, key, 'cpu', numel)."""
    return tup(s("storage"), glob("torch", storage), s(key), s("cpu"), i(numel)) + pickle.BINPERSID


def tensor(key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return call(glob("torch._utils", "_rebuild_tensor_v2"), persistent(key, numel), i(offset),
                tup(*(i(n) for n in size)), tup(*(i(n) for n in stride)), pickle.NEWFALSE,
                call(glob("collections", "OrderedDict")))


def persistent_id_cases(marker: str) -> dict[str, bytes]:
    """Zip archives whose persistent ids or entries point outside the archive or past a storage."""
    four = struct.pack("<4f", 1, 2, 3, 4)
    ok = {"0": four}

    def one(obj: bytes, **kw) -> bytes:
        return zip_checkpoint(end(proto(), pickle.EMPTY_DICT, s("w"), obj, pickle.SETITEM), storages=ok, **kw)

    return {
        "persid-parent-path": one(tensor("../../etc/passwd", 4, (4,), (1,))),
        "persid-absolute": one(tensor("/etc/passwd", 4, (4,), (1,))),
        "persid-missing-key": one(tensor("7", 4, (4,), (1,))),
        "persid-text-protocol0": zip_checkpoint(b"P" + marker.encode() + b"\n."),
        "persid-not-storage": one(tup(s("module"), glob(*TRAP), s(marker)) + pickle.BINPERSID),
        "tensor-past-storage": one(tensor("0", 4, (4,), (2,))),
        "tensor-negative-stride": one(tensor("0", 4, (2,), (-1,), offset=3)),
        "storage-size-overclaimed": one(tensor("0", 1 << 30, (4,), (1,))),
        "zip-entry-parent": one(tensor("0", 4, (4,), (1,)), extra={"../evil.py": b"open('x','w')"}),
        "zip-entry-absolute": one(tensor("0", 4, (4,), (1,)), extra={"/tmp/evil.py": b"x"}),
    }
