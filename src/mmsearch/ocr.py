"""The text in photos (OCR): a shop sign that says 火锅, a screenshot that says "Invoice".

The engine is RapidOCR (``rapidocr`` on PyPI) on onnxruntime with the PaddleOCR models its
wheel ships, so it runs offline like the rest of the offline provider: nothing is fetched
at run time (the model files are passed by path, which keeps RapidOCR off its download
code). One model pair reads Chinese and English.

Most photos hold no text, and detection at full size is the expensive step (several times
the rest of ingest), so every image first goes through a cheap gate: the same detection
model on a copy whose long side is ``GATE_SIDE`` px. Only an image where the gate sees a
text-like region is read at full size (detection, then recognition of each region found).
``bench/ocr.py`` measures the gate's recall and the costs.

The text comes back in reading order, rows top to bottom and left to right within a row
(after undoing the dominant slant, so a sign turned by 15 degrees still reads as one row);
pieces are joined without a space between Chinese characters and with one elsewhere, and
rows with a newline. Lines read with a confidence below ``MIN_CONFIDENCE`` are dropped:
below it they are mostly textures read as letters.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

#: Lines read with a lower confidence are dropped (bench/ocr.py: the threshold sweep).
MIN_CONFIDENCE = 0.8
#: The gate's copy of an image has this long side (px).
GATE_SIDE = 320
#: A gate pixel counts as text where the detector's probability exceeds this...
GATE_PIXEL = 0.5
#: ... and the gate passes an image with a region of such pixels at least this large (gate
#: pixels; a word 8 px high at gate size covers about 30).
GATE_MIN_AREA = 12
#: Full detection works on the image scaled so its short side is this (never above
#: ``MAX_SIDE`` on the long side): text 16 px high on a 640 px photo stays readable.
DET_SIDE = 736
MAX_SIDE = 2000

#: The model files, inside the ``rapidocr`` wheel.
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"
#: What read a stored text: a store can re-read rows read by another engine or settings.
VERSION = f"rapidocr/{DET_MODEL[:-5]}/{REC_MODEL[:-5]}/gate{GATE_SIDE}/c{MIN_CONFIDENCE}"

Box = tuple[tuple[float, float], ...]
#: A detector for the gate: BGR uint8 image (H, W, 3) -> text probability map (H', W').
Detector = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OcrLine:
    """One line (or piece of a line) read: its text, confidence (0-1) and the four corners
    of its box in the image's pixels, clockwise from the top left."""

    text: str
    confidence: float
    box: Box


@dataclass(frozen=True)
class OcrResult:
    """What an image says: ``text`` in reading order (rows joined by newlines), the mean
    confidence of the lines kept (weighted by length), the lines themselves, and whether
    the gate saw text at all (``False``: the image was not read, and ``text`` is empty)."""

    text: str = ""
    confidence: float = 0.0
    lines: tuple[OcrLine, ...] = ()
    detected: bool = False

    @property
    def boxes(self) -> list[Box]:
        return [line.box for line in self.lines]


# -- text: reading order and joining ---------------------------------------------------------

_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef\U00020000-\U0003ffff]")
_SPACE_BETWEEN_CJK = re.compile(rf"(?<={_CJK.pattern})\s+(?={_CJK.pattern})")


def is_cjk(char: str) -> bool:
    """A Chinese (or Japanese) character or full-width punctuation: written without spaces."""
    return bool(_CJK.fullmatch(char))


def tidy(text: str) -> str:
    """One line's text as stored: spaces collapsed, none between Chinese characters (a
    recogniser sometimes reads the gap between two words on a sign as a space)."""
    text = " ".join(text.split())
    return _SPACE_BETWEEN_CJK.sub("", text)


def join_pieces(pieces: Sequence[str]) -> str:
    """Pieces of one row, left to right, joined as the language writes them: no space
    between Chinese characters, one space otherwise ("Open" + "24 hours")."""
    out = ""
    for piece in (tidy(p) for p in pieces):
        if not piece:
            continue
        if out and not (is_cjk(out[-1]) and is_cjk(piece[0])):
            out += " "
        out += piece
    return out


def normalize(text: str) -> str:
    """Text for matching a query against what was read: NFKC (full-width letters and
    digits become ASCII), case folded, rows and runs of spaces to one space, no space
    between Chinese characters. Use it on both sides."""
    return tidy(unicodedata.normalize("NFKC", text).casefold())


def _geometry(box: Box) -> tuple[float, float, float, float]:
    """(slant of the top edge in radians, height, centre x, centre y) of a box."""
    (x0, y0), (x1, y1), _, (x3, y3) = box[:4]
    angle = math.atan2(y1 - y0, x1 - x0)
    height = math.hypot(x3 - x0, y3 - y0)
    cx = sum(p[0] for p in box[:4]) / 4
    cy = sum(p[1] for p in box[:4]) / 4
    return angle, height, cx, cy


def reading_order(lines: Sequence[OcrLine]) -> list[list[OcrLine]]:
    """Rows top to bottom, each left to right. The dominant slant (the median angle of the
    boxes' top edges) is undone first, so that two words of one turned sign, whose centres
    lie at different heights, still share a row. A line joins a row when its centre is
    within half a line height of the row's."""
    if not lines:
        return []
    geo = [_geometry(line.box) for line in lines]
    slant = statistics.median(g[0] for g in geo)
    cos, sin = math.cos(-slant), math.sin(-slant)
    placed = []
    for line, (_, height, cx, cy) in zip(lines, geo, strict=True):
        x, y = cx * cos - cy * sin, cx * sin + cy * cos
        placed.append((y, x, max(height, 1.0), line))
    placed.sort(key=lambda p: p[0])
    rows: list[list[tuple[float, float, float, OcrLine]]] = []
    for item in placed:
        row = rows[-1] if rows else None
        if row is not None:
            row_y = sum(p[0] for p in row) / len(row)
            if abs(item[0] - row_y) < 0.5 * min(item[2], min(p[2] for p in row)):
                row.append(item)
                continue
        rows.append([item])
    return [[p[3] for p in sorted(row, key=lambda p: p[1])] for row in rows]


def compose(lines: Sequence[OcrLine], min_confidence: float = MIN_CONFIDENCE) -> OcrResult:
    """The result for the lines read in one image: confident lines only, in reading order."""
    kept = [ln for ln in lines if ln.confidence >= min_confidence and tidy(ln.text)]
    rows = reading_order(kept)
    text = "\n".join(join_pieces([ln.text for ln in row]) for row in rows)
    weights = [len(tidy(ln.text)) for ln in kept]
    confidence = (
        sum(w * ln.confidence for w, ln in zip(weights, kept, strict=True)) / sum(weights)
        if kept
        else 0.0
    )
    ordered = tuple(ln for row in rows for ln in row)
    return OcrResult(text=text, confidence=round(confidence, 4), lines=ordered, detected=True)


# -- the gate ---------------------------------------------------------------------------------


@dataclass
class TextGate:
    """Says, cheaply, whether an image may hold text: the detector on a copy whose long
    side is ``side`` px, passing the image when some region of pixels it thinks text (more
    likely than ``pixel``) is at least ``min_area`` pixels large. A miss costs recall (the
    image is never read); a false alarm only costs a full read."""

    detect: Detector
    side: int = GATE_SIDE
    pixel: float = GATE_PIXEL
    min_area: int = GATE_MIN_AREA

    def __call__(self, image: Image.Image) -> bool:
        return self.strongest(image)[0] >= self.min_area

    def strongest(self, image: Image.Image) -> tuple[int, float]:
        """(area, mean probability) of the largest text-like region in the gate's copy, in
        gate pixels; (0, 0.0) when there is none."""
        small = gate_copy(image, self.side)
        if small is None:
            return 0, 0.0
        prob = np.asarray(self.detect(small), dtype=np.float32)
        return largest_region(prob, self.pixel)


def gate_copy(image: Image.Image, side: int) -> np.ndarray | None:
    """The image as the gate's detector takes it: BGR uint8, long side at most ``side``,
    both sides multiples of 32 (the detector halves its input five times); None when the
    image is too small to hold readable text."""
    scale = min(1.0, side / max(image.size))
    if min(image.size) * scale < 16:
        return None
    width = max(32, round(image.width * scale / 32) * 32)
    height = max(32, round(image.height * scale / 32) * 32)
    small = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(small)[:, :, ::-1])


def largest_region(prob: np.ndarray, pixel: float) -> tuple[int, float]:
    """(area, mean probability) of the largest 8-connected region where ``prob > pixel``."""
    from scipy import ndimage

    labels, count = ndimage.label(prob > pixel, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return 0, 0.0
    areas = np.bincount(labels.ravel())[1:]
    best = 1 + int(np.argmax(areas))
    return int(areas[best - 1]), float(prob[labels == best].mean())


# -- the engine -------------------------------------------------------------------------------


def model_dir() -> Path:
    """Where the ``rapidocr`` wheel keeps its models."""
    import rapidocr

    return Path(rapidocr.__file__).resolve().parent / "models"


@dataclass
class OcrEngine:
    """Reads the text in images: the gate, then RapidOCR at full size where it sees text.

    ``OcrEngine.shared()`` loads the models once per process, on first use (about 1 s and
    60 MB). Thread-safe: calls are serialised, as the models use every core anyway.
    """

    min_confidence: float = MIN_CONFIDENCE
    gate_side: int = GATE_SIDE
    det_side: int = DET_SIDE
    #: onnxruntime threads per model (None: one per core).
    threads: int | None = None
    _ocr: Any = field(init=False, repr=False, default=None)
    #: The gate, public for benchmarks (``bench/ocr.py`` tries other sides with its detector).
    gate: TextGate = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    _shared: ClassVar[OcrEngine | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __post_init__(self) -> None:
        self._ocr = _rapidocr(self.det_side, self.threads)
        self.gate = TextGate(_onnx_detector(self.threads), side=self.gate_side)

    @property
    def version(self) -> str:
        """What reads with these settings, as stored with each text (``enrich.py``)."""
        if (self.min_confidence, self.gate_side, self.det_side) == (
            MIN_CONFIDENCE,
            GATE_SIDE,
            DET_SIDE,
        ):
            return VERSION
        return f"{VERSION}/det{self.det_side}/gate{self.gate_side}/c{self.min_confidence}"

    @classmethod
    def shared(cls) -> OcrEngine:
        """The process's engine, made on first use."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def has_text(self, images: Sequence[Image.Image]) -> list[bool]:
        """The gate's answer for each image (no recognition)."""
        with self._lock:
            return [self.gate(im) for im in images]

    def read(self, images: Sequence[Image.Image], *, gate: bool = True) -> list[OcrResult]:
        """What each image says. Images the gate passes over come back empty with
        ``detected=False``; ``gate=False`` reads every image at full size."""
        results = []
        with self._lock:
            for image in images:
                if gate and not self.gate(image):
                    results.append(OcrResult())
                else:
                    results.append(compose(self.read_lines(image), self.min_confidence))
        return results

    def read_lines(self, image: Image.Image) -> list[OcrLine]:
        """Every line RapidOCR reads in the image at full size, whatever its confidence
        and without the gate (``compose`` makes a result of them)."""
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        out = self._ocr(bgr, use_cls=False)
        if getattr(out, "txts", None) is None or out.boxes is None:
            return []
        return [
            OcrLine(str(text), float(score), tuple((float(x), float(y)) for x, y in box))
            for box, text, score in zip(out.boxes, out.txts, out.scores, strict=True)
        ]


def _rapidocr(det_side: int, threads: int | None) -> Any:
    """RapidOCR with the wheel's models given by path (so nothing is ever downloaded),
    without the 180-degree classifier (photos and screenshots are upright), keeping every
    line (``compose`` drops the unconfident ones)."""
    from rapidocr import RapidOCR

    models = model_dir()
    return RapidOCR(
        params={
            "Global.log_level": "error",
            "Global.use_cls": False,
            "Global.text_score": 0.0,
            "Global.max_side_len": MAX_SIDE,
            "Det.model_path": str(models / DET_MODEL),
            "Det.limit_type": "min",
            "Det.limit_side_len": det_side,
            "Rec.model_path": str(models / REC_MODEL),
            "EngineConfig.onnxruntime.intra_op_num_threads": threads or -1,
        }
    )


def _onnx_detector(threads: int | None) -> Detector:
    """The detection model as a plain function for the gate: BGR uint8 in, probability
    map out, normalised as the model was trained (mean 0.5, std 0.5)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_dir() / DET_MODEL), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def detect(bgr: np.ndarray) -> np.ndarray:
        x = (bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
        return session.run(None, {name: x.transpose(2, 0, 1)[None]})[0][0, 0]

    return detect
