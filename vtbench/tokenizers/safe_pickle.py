"""An inert reader for PyTorch checkpoints that pickle more than tensors.

Official checkpoints of some families (taming's Lightning ``.ckpt``, training scripts that pickle their loss
modules or configs) hold Python objects next to the weights, so ``torch.load(weights_only=True)`` refuses
them. This module reads such a file **without ever resolving or running anything the file names**:

* The zip archive is opened with :mod:`zipfile` and its ``data.pkl`` unpickled by :class:`InertUnpickler`,
  vtbench's own restricted unpickler; storages are read from the archive's ``data/<key>`` records by name.
  We do this ourselves rather than through ``torch.load(pickle_module=...)`` because ``torch.load`` calls the
  substitute module's ``load`` for headers and legacy files, passes our unpickler objects it controls, and
  applies its own rules to storage globals; owning the whole read keeps the set of reachable callables to the
  list below, which a test can enumerate.
* Every global is looked up as an exact ``(module, name)`` pair in ``ALLOWED``: tensor rebuild functions
  (vtbench's own, bounds-checked re-implementations, never torch's), dtypes, storage *types* (markers that
  cannot be called), ``OrderedDict``, ``argparse.Namespace``, ``torch.Size``, ``torch.device``, the
  ``_codecs.encode`` that protocol 2 uses for ``bytes``, and plain builtins (set, frozenset, complex,
  bytearray of a string). There are no prefix or substring rules. A name with a dot in it (protocol 4's
  attribute paths, e.g. ``TypedStorage.__init__.__globals__.get``) is refused outright.
* Any other global becomes an inert placeholder class (:class:`Inert`) that is never imported; calling it,
  instantiating it or setting its state only records the arguments. Its name is listed in ``stubbed``.
* Opcodes that call or instantiate (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST, BUILD) accept only the allowed
  callables and placeholders; anything else is refused (e.g. REDUCE on a tensor's method).
* Persistent ids must be ``('storage', <storage type>, key, location, numel)`` with ``key`` naming a record
  of this archive; every tensor's size/stride/offset is checked against its storage before it is viewed.

Legacy (non-zip) files are not read here: they either load with ``torch.load(weights_only=True)`` or are
refused (see ``load_official_checkpoint``). Anything refused raises :class:`RefusedCheckpoint` with the rule
that refused it.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch


class RefusedCheckpoint(Exception):
    """The file cannot be read inertly. ``rule`` names the check that refused it."""

    def __init__(self, rule: str, detail: str):
        super().__init__(f"[{rule}] {detail}")
        self.rule = rule
        self.detail = detail


# -- placeholders ------------------------------------------------------------------------------------------
class Inert:
    """Stand-in for a class or function a checkpoint names but vtbench does not trust.

    Calling, instantiating, ``__setstate__``, item assignment and appends only record their arguments;
    no code of the named object runs (it is never imported).
    """

    _vtbench_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":  # NEWOBJ passes the arguments here
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}
        return self

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "Inert":  # e.g. a placeholder's result called again
        return type(self)(*args, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Iterable[Any]) -> None:
        for v in values:
            self.append(v)

    def __repr__(self) -> str:
        return f"<inert {self._vtbench_global}>"


# -- storages and tensors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StorageType:
    """Marker for a pickled storage class (``torch.FloatStorage`` ...): carries a dtype, cannot be called."""

    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class TypedStorage:
    """A storage read from the archive: ``data`` is a 1-D tensor of ``dtype`` over the record's bytes."""

    data: torch.Tensor
    key: str


def _ints(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list, torch.Size)) or not all(type(v) is int for v in x):
        raise RefusedCheckpoint("tensor", f"{what} must be a tuple of ints, got {type(x).__name__}")
    return tuple(x)


def _view(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor over ``storage`` after checking that every element it addresses lies inside the storage."""
    if not isinstance(storage, TypedStorage):
        raise RefusedCheckpoint("tensor", f"tensor storage must come from the archive, got {type(storage).__name__}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride) or min(size + stride + (0,)) < 0:
        raise RefusedCheckpoint("tensor", f"bad tensor geometry: offset {offset!r}, size {size}, stride {stride}")
    flat = storage.data
    if dtype is not None and dtype != flat.dtype:  # _rebuild_tensor_v3 over an untyped (byte) storage
        itemsize = torch.empty((), dtype=dtype).element_size()
        if flat.dtype != torch.uint8 or flat.numel() % itemsize:
            raise RefusedCheckpoint("tensor", f"storage {storage.key} is {flat.dtype}, tensor asks for {dtype}")
        flat = flat.view(dtype)
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.numel():
            raise RefusedCheckpoint("tensor", f"tensor of size {size}, stride {stride}, offset {offset} reads past "
                                              f"the end of storage {storage.key} ({flat.numel()} elements)")
    return torch.as_strided(flat, size, stride, offset)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    return _view(storage, offset, size, stride)  # hooks and Python attributes are dropped, never attached


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
                       dtype: Any, metadata: Any = None) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype):
        raise RefusedCheckpoint("tensor", f"dtype must be a torch dtype, got {type(dtype).__name__}")
    return _view(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise RefusedCheckpoint("tensor", f"parameter data must be a tensor, got {type(data).__name__}")
    return data


_TENSOR_TYPES = {"Tensor": torch.Tensor, "Parameter": torch.nn.Parameter}
_TENSOR_MARKERS = {name: StorageType(name, torch.uint8) for name in _TENSOR_TYPES}  # never instantiated


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """Tensor subclasses / tensors with Python attributes: only plain tensors and parameters, attributes dropped."""
    if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter) or \
            new_type not in _TENSOR_MARKERS.values() or not isinstance(args, tuple):
        raise RefusedCheckpoint("tensor", "_rebuild_from_type_v2 is read only for plain tensors and parameters")
    return func(*args)


# -- plain data constructors (argument-checked) ------------------------------------------------------------
def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedCheckpoint("reduce", "_codecs.encode is read only as protocol 2 writes bytes (a str, latin1)")
    return text.encode("latin-1")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data.encode("latin-1"))
    raise RefusedCheckpoint("reduce", "bytearray is read only from bytes or a latin1 string")


def _ordered_dict(items: Any = ()) -> OrderedDict:
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise RefusedCheckpoint("reduce", "OrderedDict is read only from a list of pairs")
    return OrderedDict(items)


def _is_plain(x: Any, depth: int = 0) -> bool:
    """Scalars, or (nested, shallow) tuples/lists/sets of scalars: values whose construction runs no user code."""
    if isinstance(x, _SCALARS):
        return True
    return depth < 4 and isinstance(x, (tuple, list, set, frozenset)) and all(_is_plain(v, depth + 1) for v in x)


def _plain(kind: type, max_args: int) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        if len(args) > max_args or not all(_is_plain(a) for a in args):
            raise RefusedCheckpoint("reduce", f"{kind.__name__} is read only from plain values")
        return kind(*args)
    make.__name__ = kind.__name__
    return make


def _size(dims: Any = ()) -> torch.Size:
    return torch.Size(_ints(dims, "torch.Size"))


def _device(spec: Any = "cpu", index: Any = None) -> torch.device:
    if not isinstance(spec, (str, int)) or not (index is None or type(index) is int):
        raise RefusedCheckpoint("reduce", "torch.device is read only from a string or an int")
    return torch.device(spec) if index is None else torch.device(spec, index)


_SCALARS = (int, float, complex, str, bytes, bool, type(None))


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("argparse", "Namespace"): argparse.Namespace,  # plain attributes; building it runs no user code
        ("torch", "Size"): _size,
        ("torch", "device"): _device,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TENSOR_MARKERS["Tensor"],
        ("torch.nn.parameter", "Parameter"): _TENSOR_MARKERS["Parameter"],
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "bytearray"): _bytearray,
        ("builtins", "set"): _plain(set, 1),
        ("builtins", "frozenset"): _plain(frozenset, 1),
        ("builtins", "complex"): _plain(complex, 2),
    }
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            table[("torch", name)] = obj
    for dtype, storage_name in torch.storage._dtype_to_storage_type_map().items():
        table[("torch", storage_name)] = StorageType(storage_name, dtype)
    table[("torch", "UntypedStorage")] = StorageType("UntypedStorage", torch.uint8)
    table[("torch.storage", "UntypedStorage")] = table[("torch", "UntypedStorage")]  # dtypes without a typed class
    return table


ALLOWED: dict[tuple[str, str], Any] = _allowed()
"""Every global the inert reader resolves, by exact (module, name); everything else is a placeholder."""

_CALLABLE = {id(v) for v in ALLOWED.values() if callable(v) and not isinstance(v, (torch.dtype, StorageType))}
_INSTANTIABLE = (OrderedDict, argparse.Namespace)


class InertUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcode table can be restricted
    """Restricted unpickler: exact allowlist, placeholders for the rest, no dotted names, checked opcodes."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, storages: Callable[[tuple], Any]):
        super().__init__(file, encoding="utf-8")
        self._storages = storages
        self.stubbed: set[str] = set()
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if not isinstance(module, str) or not isinstance(name, str):
            raise RefusedCheckpoint("global", "GLOBAL names must be strings")
        if self.proto < 3:  # protocol 2 spells Python 3 names the Python 2 way; map them as pickle does (data only)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if "." in name:
            raise RefusedCheckpoint("dotted-global", f"global {module} {name!r} is an attribute path; refused")
        key = (module, name)
        if key in ALLOWED:
            return ALLOWED[key]
        full = f"{module}.{name}"
        self.stubbed.add(full)
        if key not in self._stubs:
            self._stubs[key] = type(f"Inert[{full}]", (Inert,), {"_vtbench_global": full})
        return self._stubs[key]

    def persistent_load(self, pid: Any) -> Any:
        return self._storages(pid)

    # -- opcodes that call or instantiate: only the allowlist and placeholders --------------------------------
    @staticmethod
    def _check_call(func: Any, op: str) -> None:
        if id(func) in _CALLABLE or (isinstance(func, type) and issubclass(func, Inert)) or isinstance(func, Inert):
            return
        raise RefusedCheckpoint(op.lower(), f"{op} on {type(func).__name__} {func!r:.80} is not allowed")

    @staticmethod
    def _check_class(cls: Any, op: str) -> None:
        if isinstance(cls, type) and (issubclass(cls, Inert) or cls in _INSTANTIABLE):
            return
        raise RefusedCheckpoint(op.lower(), f"{op} of {cls!r:.80} is not allowed")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_call(func, "REDUCE")
        if not isinstance(args, tuple):
            raise RefusedCheckpoint("reduce", "REDUCE arguments must be a tuple")
        self.stack[-1] = func(*args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls, "NEWOBJ")
        self.append(cls.__new__(cls, *args) if issubclass(cls, Inert) else cls())
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls, "NEWOBJ_EX")
        self.append(cls.__new__(cls, *args, **kwargs) if issubclass(cls, Inert) else cls())
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        self._check_class(klass, "INST/OBJ")
        self.append(klass(*args) if issubclass(klass, Inert) else klass())

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert):
            inst.__setstate__(state)
            return
        if isinstance(inst, _INSTANTIABLE) and isinstance(state, dict) and all(type(k) is str for k in state):
            inst.__dict__.update(state)  # e.g. a state dict's ``_metadata``; plain attribute storage, no setters
            return
        raise RefusedCheckpoint("build", f"BUILD on {type(inst).__name__} is not allowed")
    dispatch[pickle.BUILD[0]] = load_build


# -- the zip archive ---------------------------------------------------------------------------------------
_KEY = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class InertResult:
    obj: Any
    stubbed: list[str] = field(default_factory=list)


def read_zip_inert(path: str, *, max_pickle_bytes: int = 1 << 30) -> InertResult:
    """Read a torch zip checkpoint with :class:`InertUnpickler`; see the module docstring."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise RefusedCheckpoint("container", f"not a readable zip archive ({exc})") from None
    with zf:
        names = zf.namelist()
        for n in names:
            if n.startswith("/") or "\\" in n or ".." in n.split("/"):
                raise RefusedCheckpoint("zip-path", f"archive entry {n!r} is not a plain relative name")
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise RefusedCheckpoint("container", f"expected one <archive>/data.pkl record, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).strip() not in (b"little", b""):
            raise RefusedCheckpoint("container", "big-endian checkpoints are not read inertly")
        info = zf.getinfo(pkls[0])
        if info.file_size > max_pickle_bytes:
            raise RefusedCheckpoint("container", f"data.pkl is {info.file_size} bytes")
        entries = {n: zf.getinfo(n) for n in names}
        cache: dict[str, torch.Tensor] = {}

        def storage(pid: Any) -> TypedStorage:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
                raise RefusedCheckpoint("persistent-id", f"unexpected persistent id {pid!r:.120}")
            _, stype, key, _location, numel = pid
            if not isinstance(stype, StorageType) or stype in _TENSOR_MARKERS.values():
                raise RefusedCheckpoint("persistent-id",
                                        f"storage type must be a torch storage class, got {stype!r:.80}")
            if isinstance(key, bytes):
                key = key.decode("ascii", "replace")
            if not isinstance(key, str) or not _KEY.match(key) or f"{prefix}data/{key}" not in entries:
                raise RefusedCheckpoint("persistent-id", f"storage {key!r:.80} is not a record of this archive")
            if type(numel) is not int or numel < 0:
                raise RefusedCheckpoint("persistent-id", f"storage size {numel!r:.40} is not a count")
            itemsize = torch.empty((), dtype=stype.dtype).element_size()
            rec = entries[f"{prefix}data/{key}"]
            if rec.file_size < numel * itemsize:
                raise RefusedCheckpoint("persistent-id", f"storage {key} holds {rec.file_size} bytes, "
                                                         f"{numel} x {itemsize} declared")
            if key not in cache:
                cache[key] = torch.frombuffer(bytearray(zf.read(rec)) or bytearray(1), dtype=torch.uint8)
            raw = cache[key][: numel * itemsize]
            return TypedStorage(raw.view(stype.dtype) if numel else torch.empty(0, dtype=stype.dtype), key)

        up = InertUnpickler(io.BytesIO(zf.read(info)), storage)
        try:
            obj = up.load()
        except RefusedCheckpoint:
            raise
        except RecursionError:
            raise RefusedCheckpoint("malformed", "data.pkl nests too deeply") from None
        except Exception as exc:  # noqa: BLE001 - any failure of a hostile stream is a refusal, never a fallback
            raise RefusedCheckpoint("malformed", f"data.pkl could not be read inertly ({type(exc).__name__}: "
                                                 f"{str(exc)[:200]})") from None
        return InertResult(obj, sorted(up.stubbed))


__all__ = ["ALLOWED", "Inert", "InertResult", "InertUnpickler", "RefusedCheckpoint", "read_zip_inert"]
