"""Image datasets: the embedded sample set, image folders and parquet files, each with a recorded identity.

``open_dataset(spec, policy, limit=None, seed=0)`` accepts:

- ``"embedded"`` -- the repository's embedded set (``data/embedded``: ``photos/``, ``text/``, ``detail/``), or
  ``"embedded/<subset>"`` for one subfolder. These names win over a same-named folder in the working
  directory; write ``./embedded`` for that.
- an image folder, searched recursively for ``.png .jpg .jpeg .bmp .webp .tif .tiff`` (any case); hidden files
  and folders (names starting with ``.``) are ignored. When every image lies inside a top-level subfolder, the
  subfolders are classes and labels are their index in sorted order (torchvision ``ImageFolder``), which also
  reads the ImageNet validation layout ``val/n01440764/ILSVRC2012_val_00000293.JPEG``; otherwise labels are -1.
- a ``.parquet`` file or a folder of them (searched recursively, sorted by relative path). The image column is
  found automatically -- a struct with a binary ``bytes`` field (the Hugging Face ``datasets`` ``Image`` layout
  used by ``huaweilin/VTBench``), else a binary column -- or named with ``image_column=``. An integer
  ``label``/``labels``/``class``/``target`` column (or ``label_column=``) gives labels. Only one row group's
  image column is held in memory at a time (per process); images are decoded one at a time in ``__getitem__``.
- ``folder:<path>`` / ``parquet:<path>`` force the kind (a folder holding both images and parquet files is
  otherwise read as an image folder).

Identity: ``ids`` are relative posix file names for folders (sorted); for parquet, the struct's ``path`` values
when every row has one and they are unique, else ``<file path relative to the root, without .parquet>/<row>``,
in storage order (files sorted, rows in order) so that reading stays sequential. ``info.revision`` is a short sha1
over the ids and the files' content digests (``hashing.content_digests``, memoised by path, size and mtime), so
any added, removed, renamed or rewritten file changes it and cached reference statistics can be keyed on it.

``limit``: a deterministic subset -- ids ranked by ``sha1(f"{seed}:{id}")``, the first ``limit`` kept, in the
dataset's canonical order. It depends only on the set of ids, ``limit`` and ``seed``, never on listing order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vtbench.core import fingerprint
from vtbench.data.images import ImageLoadError, image_size, load_image, load_image_bytes
from vtbench.data.policies import Policy
from vtbench.hashing import content_digests
from vtbench.registry import did_you_mean

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "DatasetInfo", "ImageDataset", "FolderDataset", "ParquetDataset",
           "open_dataset", "collate", "select_subset", "embedded_root"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "validation", "val", "valid", "test")
_LABEL_COLUMNS = ("label", "labels", "class", "class_id", "cls", "target")
_IMAGE_COLUMN_HINTS = ("image", "img", "images", "png", "jpg", "jpeg", "webp", "bytes", "image_bytes")

ACCEPTED = ("'embedded' or 'embedded/<subset>' (the repository's sample set), an image folder (recursive; "
            "class subfolders optional), a .parquet file or a folder of .parquet files (Hugging Face image "
            "layout or a binary column); prefix with 'folder:' or 'parquet:' to force the kind")


class DatasetError(ValueError):
    """A dataset spec that cannot be opened; the message names the path and what is accepted."""


@dataclass
class DatasetInfo:
    id: str
    kind: str                      # "embedded" | "folder" | "parquet"
    root: str                      # absolute path
    revision: str                  # sha1[:12] over all ids + file content digests
    n_total: int
    n_selected: int
    split: str | None
    policy: dict
    seed: int = 0
    limit: int | None = None
    selection: str = ""            # sha1[:12] over the selected ids (identifies the subset)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def select_subset(ids: Sequence[str], limit: int | None, seed: int = 0) -> list[int]:
    """Indices (ascending) of the deterministic ``limit``-subset of ``ids`` (all when limit is None or large)."""
    n = len(ids)
    if limit is None or limit >= n:
        return list(range(n))
    ranked = sorted(range(n), key=lambda i: (_sha1(f"{seed}:{ids[i]}"), ids[i]))
    return sorted(ranked[:limit])


def _fingerprint(lines: Sequence[str]) -> str:
    return fingerprint(list(lines), length=12)


class ImageDataset(Dataset):
    """Base dataset. Subclasses implement ``_load(j)`` (``j`` an index into ``self._all_ids``), returning a uint8
    HxWx3 array or raising :class:`ImageLoadError`."""

    kind = ""

    def __init__(self, *, dataset_id: str, kind: str, root: Path, all_ids: list[str], all_labels: list[int],
                 revision: str, split: str | None, policy: Policy, limit: int | None, seed: int,
                 max_pixels: int | float | None, classes: list[str] | None = None,
                 extra: dict | None = None):
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
            raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
        limit = None if limit is None else int(limit)
        self.policy = policy
        self.annotations: dict[str, list[dict[str, Any]]] | None = None  # text task: {id: words}
        self.max_pixels = max_pixels
        self.classes = classes
        self._all_ids = all_ids
        self._all_labels = all_labels
        self._index = select_subset(all_ids, limit, seed)
        self._id_pos: dict[str, int] | None = None
        self.ids: list[str] = [all_ids[j] for j in self._index]
        self.labels: list[int] = [all_labels[j] for j in self._index]
        self.info = DatasetInfo(id=dataset_id, kind=kind, root=str(root), revision=revision,
                                n_total=len(all_ids), n_selected=len(self.ids), split=split,
                                policy=policy.describe(), seed=seed, limit=limit,
                                selection=_fingerprint(self.ids), extra=dict(extra or {}))

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, j: int) -> np.ndarray:
        raise NotImplementedError

    def size_of(self, sample_id: str) -> tuple[int, int] | None:
        """``(width, height)`` of a sample read from its header (nothing decoded), None when unreadable."""
        if self._id_pos is None:
            self._id_pos = {sid: j for j, sid in enumerate(self._all_ids)}
        try:
            return self._size(self._id_pos[sample_id])
        except (KeyError, ImageLoadError):
            return None

    def _size(self, j: int) -> tuple[int, int]:
        arr = self._load(j)
        return arr.shape[1], arr.shape[0]

    def load_raw(self, i: int) -> np.ndarray:
        """The decoded image ``i`` before the policy (raises :class:`ImageLoadError`)."""
        return self._load(self._index[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i = i % len(self)
        sample_id, label = self.ids[i], self.labels[i]
        try:
            img = self.policy.prepare(self._load(self._index[i]))
        except ImageLoadError as exc:
            return {"id": sample_id, "image": None, "label": label, "error": str(exc)}
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        if not chw.flags.writeable:  # a view of Pillow's read-only buffer (e.g. a 1x1 image): own a copy
            chw = chw.copy()
        tensor = torch.from_numpy(chw)
        return {"id": sample_id, "image": tensor, "label": label, "error": None}

    def __repr__(self) -> str:
        i = self.info
        return (f"{type(self).__name__}(id={i.id!r}, kind={i.kind!r}, n={i.n_selected}/{i.n_total}, "
                f"revision={i.revision!r}, policy={i.policy.get('name')!r})")


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` keeping per-image tensors in lists (sizes may differ); failed samples go to
    ``errors`` as ``(id, message)`` and are left out of ``ids``/``images``/``labels``."""
    ok = [s for s in samples if s.get("error") is None]
    return {
        "ids": [s["id"] for s in ok],
        "images": [s["image"] for s in ok],
        "labels": torch.tensor([int(s["label"]) for s in ok], dtype=torch.long),
        "errors": [(s["id"], s["error"]) for s in samples if s.get("error") is not None],
    }


# ---------------------------------------------------------------------------------------------------- folders


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def walk_files(root: Path, extensions: tuple[str, ...]) -> list[tuple[str, int]]:
    """(relative posix path, size in bytes) of every file under ``root`` whose name ends with one of
    ``extensions`` (case-insensitive), sorted by path: hidden files and folders skipped, symlinks followed once
    (a symlink loop is cut), dangling symlinks left out. Image and shape datasets list their files with it."""
    found: list[tuple[str, int]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = Path(dirpath).relative_to(root)
        for fn in filenames:
            if _is_hidden(fn) or not fn.lower().endswith(extensions):
                continue
            full = Path(dirpath) / fn
            try:
                if not full.is_file():
                    continue
                size = full.stat().st_size
            except OSError:
                continue  # a dangling symlink is not part of the dataset
            found.append(((rel_dir / fn).as_posix(), size))
    found.sort()
    return found


def _list_images(root: Path) -> list[tuple[str, int]]:
    """(relative posix path, size in bytes) of every image under root, sorted by path."""
    return walk_files(root, IMAGE_EXTENSIONS)


def _has_parquet(root: Path) -> bool:
    return any(not any(_is_hidden(p) for p in f.relative_to(root).parts) for f in root.rglob("*.parquet"))


class FolderDataset(ImageDataset):
    def __init__(self, root: Path, policy: Policy, *, dataset_id: str, kind: str = "folder",
                 limit: int | None = None, seed: int = 0, max_pixels: int | float | None = None,
                 split: str | None = None):
        self.root = root
        listing = _list_images(root)
        if not listing:
            raise DatasetError(f"no images found under {str(root)!r} (looked recursively for "
                               f"{', '.join(IMAGE_EXTENSIONS)}, any case; hidden files ignored). Accepted: {ACCEPTED}")
        ids = [p for p, _ in listing]
        classes: list[str] | None = None
        labels = [-1] * len(ids)
        if all("/" in p for p in ids):  # every image inside a top-level folder: ImageFolder classes
            classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name))
            if kind == "embedded":  # its classes are the image categories; data/embedded/shapes holds meshes
                classes = sorted({p.split("/", 1)[0] for p in ids})
            cls_index = {c: k for k, c in enumerate(classes)}
            labels = [cls_index[p.split("/", 1)[0]] for p in ids]
        # content, not sizes: an image overwritten by another of the same size is another dataset revision
        revision = _fingerprint([f"{p}\t{d}" for p, d in zip(ids, content_digests(root, ids))])
        if split is None and root.name.lower() in SPLIT_NAMES:
            split = root.name
        super().__init__(dataset_id=dataset_id, kind=kind, root=root, all_ids=ids, all_labels=labels,
                         revision=revision, split=split, policy=policy, limit=limit, seed=seed,
                         max_pixels=max_pixels, classes=classes,
                         extra={"n_classes": len(classes)} if classes else {})

    def _load(self, j: int) -> np.ndarray:
        return load_image(self.root / self._all_ids[j], max_pixels=self.max_pixels)

    def _size(self, j: int) -> tuple[int, int]:
        return image_size(self.root / self._all_ids[j], max_pixels=self.max_pixels)


# ---------------------------------------------------------------------------------------------------- parquet


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted((f for f in root.rglob("*.parquet")
                   if f.is_file() and not any(_is_hidden(p) for p in f.relative_to(root).parts)),
                  key=lambda f: f.relative_to(root).as_posix())


def _file_split(rel: str) -> str | None:
    """'train-00000-of-00001.parquet' -> 'train'; 'validation/x.parquet' -> 'validation'."""
    parts = rel.split("/")
    for part in [parts[-1]] + parts[:-1][::-1]:
        low = part.lower()
        for name in SPLIT_NAMES:
            if low == name or low.startswith((name + "-", name + "_", name + ".")):
                return name
    return None


def _detect_image_column(schema, path: Path) -> tuple[str, bool]:
    """(column name, is_struct) for the image column of an arrow schema."""
    import pyarrow as pa

    def is_binary(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or (
            hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(t))

    structs, binaries = [], []
    for f in schema:
        if pa.types.is_struct(f.type):
            names = [f.type.field(k).name for k in range(f.type.num_fields)]
            if "bytes" in names and is_binary(f.type.field(names.index("bytes")).type):
                structs.append(f.name)
        elif is_binary(f.type):
            binaries.append(f.name)
    for group, is_struct in ((structs, True), (binaries, False)):
        if len(group) == 1:
            return group[0], is_struct
        if len(group) > 1:
            for hint in _IMAGE_COLUMN_HINTS:
                for name in group:
                    if name.lower() == hint:
                        return name, is_struct
            raise DatasetError(f"{str(path)!r}: several columns could hold images ({', '.join(group)}); "
                               f"pick one with image_column=")
    listing = ", ".join(f"{f.name}: {f.type}" for f in schema)
    raise DatasetError(f"{str(path)!r}: no image column found (expected a struct with a binary 'bytes' field, "
                       f"as Hugging Face datasets write images, or a binary column). Columns: {listing}. "
                       f"Name the column with image_column= if it is there.")


class ParquetDataset(ImageDataset):
    def __init__(self, root: Path, policy: Policy, *, dataset_id: str, limit: int | None = None, seed: int = 0,
                 max_pixels: int | float | None = None, split: str | None = None,
                 image_column: str | None = None, label_column: str | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.root = root
        base = root.parent if root.is_file() else root
        files = _parquet_files(root)
        rels = [f.relative_to(base).as_posix() for f in files]
        if split is not None:
            keep = [k for k, r in enumerate(rels) if _file_split(r) == split or r.split("/")[0] == split]
            if not keep:
                found = sorted({s for s in (_file_split(r) for r in rels) if s})
                raise DatasetError(f"{str(root)!r}: no parquet files for split {split!r}; "
                                   f"splits found: {', '.join(found) or 'none'}")
            files, rels = [files[k] for k in keep], [rels[k] for k in keep]
        if not files:
            raise DatasetError(f"no .parquet files under {str(root)!r}. Accepted: {ACCEPTED}")
        if split is None:
            splits = {_file_split(r) for r in rels}
            split = splits.pop() if len(splits) == 1 else None

        pfs = []
        for f in files:
            try:
                pfs.append(pq.ParquetFile(f))
            except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
                raise DatasetError(f"{str(f)!r}: not a readable parquet file ({exc})") from None
        schema = pfs[0].schema_arrow
        if image_column is None:
            image_column, is_struct = _detect_image_column(schema, files[0])
        else:
            if image_column not in schema.names:
                raise DatasetError(f"{str(files[0])!r}: " + did_you_mean(image_column, schema.names, "column"))
            t = schema.field(image_column).type
            is_struct = pa.types.is_struct(t)
            if is_struct and t.get_field_index("bytes") < 0:
                raise DatasetError(f"{str(files[0])!r}: column {image_column!r} is a struct without a 'bytes' field")
        if label_column is None:
            for name in _LABEL_COLUMNS:
                if name in schema.names and pa.types.is_integer(schema.field(name).type):
                    label_column = name
                    break
        elif label_column not in schema.names:
            raise DatasetError(f"{str(files[0])!r}: " + did_you_mean(label_column, schema.names, "column"))

        has_path = is_struct and schema.field(image_column).type.get_field_index("path") >= 0
        # global row -> (file, row group, row within the group)
        locs: list[tuple[int, int, int]] = []
        fallback_ids: list[str] = []
        paths: list[Any] = []
        labels: list[int] = []
        for k, (pf, f, rel) in enumerate(zip(pfs, files, rels)):
            if pf.schema_arrow.names != schema.names or image_column not in pf.schema_arrow.names:
                raise DatasetError(f"{str(f)!r}: its columns ({', '.join(pf.schema_arrow.names)}) differ from "
                                   f"{str(files[0])!r}'s; keep one dataset layout per folder")
            stem = rel[: -len(".parquet")] if rel.endswith(".parquet") else rel
            row = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                locs.extend((k, g, r) for r in range(n))
                fallback_ids.extend(f"{stem}/{row + r}" for r in range(n))
                row += n
            if has_path:
                col = pf.read(columns=[f"{image_column}.path"]).column(image_column)
                paths.extend((cell or {}).get("path") for cell in col.to_pylist())
            if label_column is not None:
                lab = pf.read(columns=[label_column]).column(label_column).to_pylist()
                labels.extend(-1 if v is None else int(v) for v in lab)
        if not locs:
            raise DatasetError(f"{str(root)!r}: the parquet data has no rows")
        if not labels:
            labels = [-1] * len(locs)
        use_paths = has_path and len(paths) == len(locs) and all(paths) and len(set(paths)) == len(paths)
        ids = [str(p) for p in paths] if use_paths else fallback_ids
        digests = content_digests(base, rels)  # content of each parquet file (memoised by path, size, mtime)
        sizes = [f"{rel}\t{d}\t{pf.metadata.num_rows}" for d, rel, pf in zip(digests, rels, pfs)]
        revision = _fingerprint(sizes + ids)

        self._files = files
        self._locs = locs
        self._image_column = image_column
        self._is_struct = is_struct
        self._has_path = has_path
        self._open: dict[int, Any] = {}
        self._cache: tuple[tuple[int, int], Any] | None = None
        self._pid = os.getpid()
        super().__init__(dataset_id=dataset_id, kind="parquet", root=root, all_ids=ids, all_labels=labels,
                         revision=revision, split=split, policy=policy, limit=limit, seed=seed,
                         max_pixels=max_pixels,
                         extra={"image_column": image_column, "label_column": label_column,
                                "files": rels, "id_source": "path" if use_paths else "row"})

    def __getstate__(self):  # file handles and the row-group cache stay in their process
        state = dict(self.__dict__)
        state["_open"] = {}
        state["_cache"] = None
        return state

    def _parquet(self, k: int):
        import pyarrow.parquet as pq

        if self._pid != os.getpid():  # forked worker: reopen files here
            self._open, self._cache, self._pid = {}, None, os.getpid()
        if k not in self._open:
            self._open[k] = pq.ParquetFile(self._files[k])
        return self._open[k]

    def _row_group(self, k: int, g: int):
        """The image column of row group g of file k; one group is cached per process."""
        if self._cache is not None and self._cache[0] == (k, g):
            return self._cache[1]
        self._cache = None  # release the previous group before reading the next
        col = self._parquet(k).read_row_group(g, columns=[self._image_column]).column(self._image_column)
        col = col.combine_chunks()
        self._cache = ((k, g), col)
        return col

    def _load(self, j: int) -> np.ndarray:
        k, g, r = self._locs[j]
        name = f"{self._files[k]}::{self._all_ids[j]}"
        try:
            col = self._row_group(k, g)
        except Exception as exc:  # noqa: BLE001 - a damaged row group spoils its samples, not the run
            raise ImageLoadError(name, f"cannot read parquet row group {g} ({type(exc).__name__}: {exc})",
                                 "re-download the parquet file") from None
        value = col[r].as_py()  # one row only; a null struct gives None
        if self._is_struct:
            cell = value or {}
            value = cell.get("bytes")
            stored_path = cell.get("path")
            if value is None and stored_path:
                # Hugging Face Image features may store a path instead of bytes
                p = Path(stored_path)
                p = p if p.is_absolute() else self._files[k].parent / p
                return load_image(p, max_pixels=self.max_pixels)
        return load_image_bytes(value or b"", name, max_pixels=self.max_pixels)


# ---------------------------------------------------------------------------------------------------- specs


def embedded_root() -> Path:
    from vtbench.paths import DATA_DIR

    return DATA_DIR / "embedded"


def open_dataset(spec: str | os.PathLike, policy: Policy, limit: int | None = None, seed: int = 0, *,
                 max_pixels: int | float | None = None, split: str | None = None,
                 image_column: str | None = None, label_column: str | None = None) -> ImageDataset:
    """Open ``spec`` (see the module docstring) with preprocessing ``policy``; ``limit``/``seed`` select a
    deterministic subset; ``max_pixels`` is passed to the image loader; ``split`` keeps the parquet files of one
    split (or, for a folder, opens its ``<split>`` subfolder)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a vtbench Policy (see vtbench.data.policies.get_policy), got {policy!r}")
    raw = os.fspath(spec)
    if not raw.strip():
        raise DatasetError(f"empty dataset spec. Accepted: {ACCEPTED}")
    forced = None
    for prefix in ("folder:", "parquet:"):
        if raw.startswith(prefix):
            forced, raw = prefix[:-1], raw[len(prefix):]
    common = dict(limit=limit, seed=seed, max_pixels=max_pixels)

    norm = raw.replace("\\", "/").rstrip("/")
    if forced is None and (norm == "embedded" or norm.startswith("embedded/")):
        base = embedded_root()
        sub = norm[len("embedded/"):] if norm != "embedded" else ""
        if not base.is_dir():
            raise DatasetError(f"the embedded dataset is missing: {str(base)!r} does not exist. It ships inside "
                               f"the vtbench package (data/embedded in a checkout, vtbench/_declarations/data/"
                               f"embedded in a wheel); reinstall vtbench, or point VTBENCH_HOME at a folder "
                               f"holding data/embedded")
        root = base / sub if sub else base
        if not root.is_dir():
            subsets = sorted(d.name for d in base.iterdir() if d.is_dir() and not _is_hidden(d.name))
            raise DatasetError(f"embedded subset {sub!r} not found in {str(base)!r}: "
                               + did_you_mean(sub, subsets, "embedded subset"))
        return FolderDataset(root, policy, dataset_id=norm, kind="embedded", split=split, **common)

    path = Path(raw).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset {raw!r} not found: no such file or folder ({str(path.absolute())!r}). "
                           f"Accepted: {ACCEPTED}")
    path = path.resolve()
    if path.is_file():
        if forced == "folder" or path.suffix.lower() != ".parquet":
            raise DatasetError(f"{str(path)!r} is a file but not a .parquet file. Accepted: {ACCEPTED}")
        return ParquetDataset(path, policy, dataset_id=path.stem, split=split, image_column=image_column,
                              label_column=label_column, **common)
    if not path.is_dir():
        raise DatasetError(f"{str(path)!r} is neither a file nor a folder. Accepted: {ACCEPTED}")
    kind = forced
    if kind is None:
        # a folder with images is an image folder; one holding only parquet files is a parquet dataset
        if split is not None and (path / split).is_dir() and not _has_parquet(path):
            kind = "folder"
        elif _list_images_any(path):
            kind = "folder"
        elif _has_parquet(path):
            kind = "parquet"
        else:
            raise DatasetError(f"no images or .parquet files found under {str(path)!r}. Accepted: {ACCEPTED}")
    if kind == "parquet":
        return ParquetDataset(path, policy, dataset_id=path.name, split=split, image_column=image_column,
                              label_column=label_column, **common)
    if split is not None:
        if not (path / split).is_dir():
            raise DatasetError(f"split folder {str(path / split)!r} does not exist")
        path = path / split
    return FolderDataset(path, policy, dataset_id=path.name, split=split, **common)


def _list_images_any(root: Path) -> bool:
    """Whether root holds at least one (non-hidden) image, without listing everything."""
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        if any(not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS) for f in filenames):
            return True
    return False
