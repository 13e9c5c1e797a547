"""A local stand-in for DashScope that speaks its documented HTTP protocol.

DashScope cannot be reached from the test machines, so the provider is tested against this
server through the real ``dashscope`` SDK. It serves

- ``POST /api/v1/services/embeddings/multimodal-embedding/multimodal-embedding``
  (``{"model", "input": {"contents": [{"image": ...} | {"text": ...} | {"image", "text"}]},
  "parameters": {"dimension", "enable_fusion"}}`` ->
  ``{"output": {"embeddings": [{"index", "embedding", "type"}]}, "usage", "request_id"}``),
  with each model's documented limits (``EMBEDDING_MODELS``): contents and images per
  request, the dimensions it takes, and how it fuses an image with a text
  (``enable_fusion`` for qwen3-vl-embedding: one vector for the whole request; an
  image and a text in one content object for the tongyi 2026-03-06 snapshots; always, for
  qwen2.5-vl-embedding). A model it does not know takes one item and answers 1024-d.
- ``POST /api/v1/services/aigc/multimodal-generation/generation``
  (``{"model", "input": {"messages": [...]}}`` ->
  ``{"output": {"choices": [{"finish_reason", "message": {"role", "content": [{"text"}]}}]},
  "usage", "request_id"}``)

with DashScope's error bodies (``{"code", "message", "request_id"}``) and statuses: 401
``InvalidApiKey`` for a wrong key, 429 ``Throttling.RateQuota`` with rate-limit headers, 500
``InternalError``, 400 ``InvalidParameter`` for a bad, over-3-MB or under-11-pixel image (in
a batch, the whole request fails, as DashScope's does), too many contents or images, a
dimension the model does not take, fusion it does not offer. Faults are
scripted with ``plan(...)`` and served in arrival order; every request is logged with its
arrival time, so tests can measure rate and concurrency from the server's side.

The "models" are deterministic and simple but meaningful, so search can be tested end to
end: an image's vector holds the share of its pixels nearest each of eleven named colours
plus pixel statistics; a text's vector holds the colours it names (中文 or English) plus
hashed words; the same colour dimensions are shared, so "红色" finds red images. The
"vision model" describes an image by its colours, brightness and shape, in the language of
the prompt, in one of three answer layouts (picked by the image) to exercise the parser;
the current models (``qwen3-vl-*``, ``qwen-vl-max``) answer in the markdown layouts they
favour and carry a ``reasoning_content`` field (filled when ``enable_thinking`` is on).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

DIM = 1024
EMBEDDING_PATH = "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding"
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
MAX_IMAGE_CHARS = 3 * 1024 * 1024
#: DashScope refuses images whose width or height is not larger than this.
MIN_IMAGE_SIDE = 10

#: name_en, name_zh, RGB centre
COLORS: list[tuple[str, str, tuple[int, int, int]]] = [
    ("red", "红色", (200, 30, 30)),
    ("orange", "橙色", (230, 130, 30)),
    ("yellow", "黄色", (230, 210, 40)),
    ("green", "绿色", (50, 140, 50)),
    ("blue", "蓝色", (40, 80, 200)),
    ("purple", "紫色", (130, 50, 160)),
    ("pink", "粉色", (240, 150, 180)),
    ("brown", "棕色", (120, 80, 40)),
    ("black", "黑色", (15, 15, 15)),
    ("white", "白色", (240, 240, 240)),
    ("gray", "灰色", (128, 128, 128)),
]
N_COLORS = len(COLORS)
PIXEL_DIMS = slice(16, 16 + 64 + 64)  # histogram and thumbnail, image vectors only
HASH_DIMS = (512, 1024)  # hashed words, text vectors only
COLOR_WEIGHT = 0.8  # share of a vector's length in the colour dimensions


#: A text containing this is refused by the content inspection (400 DataInspectionFailed),
#: as DashScope refuses what its moderation flags: the whole request, not the one text.
FLAGGED = "<<flagged>>"


class InspectionError(ValueError):
    """Input the service's content inspection refuses."""


# -- the fake models ----------------------------------------------------------------------------


def decode_data_uri(uri: str) -> Image.Image:
    """A ``data:image/...;base64,`` URI to an RGB image; ValueError if it is not one."""
    match = re.fullmatch(r"data:image/[\w.+-]+;base64,(.+)", uri, re.DOTALL)
    if not match:
        raise ValueError("not a base64 image data URI")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=True)))
        image.load()
    except Exception as exc:  # noqa: BLE001 - any decode failure is the client's bad input
        raise ValueError(f"cannot decode the image: {exc}") from None
    return image.convert("RGB")


def color_fractions(image: Image.Image) -> np.ndarray:
    """Share of the pixels nearest each named colour (sums to 1)."""
    small = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32).reshape(-1, 3)
    centres = np.array([c for _, _, c in COLORS], dtype=np.float32)
    nearest = np.argmin(((small[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=N_COLORS).astype(np.float32) / len(nearest)


def _unit(x: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(x))
    return x / n if n > 0 else x


def image_embedding(image: Image.Image) -> np.ndarray:
    """Colour shares (shared with texts) + a colour histogram and a thumbnail (image only)."""
    vec = np.zeros(DIM, np.float32)
    vec[:N_COLORS] = COLOR_WEIGHT * _unit(color_fractions(image))
    rgb = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.int64).reshape(-1, 3)
    hist = np.bincount((rgb // 64) @ np.array([16, 4, 1]), minlength=64).astype(np.float32)
    thumb = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32).ravel()
    pixels = np.concatenate([_unit(hist), _unit(thumb - thumb.mean())])
    vec[PIXEL_DIMS] = np.sqrt(1 - COLOR_WEIGHT**2) * _unit(pixels)
    return _unit(vec)


def colors_in_text(text: str) -> list[int]:
    """Indices of the colours a text names, in order of first mention."""
    found: list[tuple[int, int]] = []
    lower = text.lower()
    for i, (en, zh, _) in enumerate(COLORS):
        positions = [m.start() for m in re.finditer(rf"\b{en}\b", lower)]
        positions += [m.start() for m in re.finditer(zh, text)]
        if en == "gray":
            positions += [m.start() for m in re.finditer(r"\bgrey\b", lower)]
        if positions:
            found.append((min(positions), i))
    return [i for _, i in sorted(found)]


def _tokens(text: str) -> list[str]:
    lower = text.lower()
    words = re.findall(r"[a-z0-9]+", lower)
    cjk = re.findall(r"[\u4e00-\u9fff]", text)
    return words + cjk + ["".join(p) for p in zip(cjk, cjk[1:], strict=False)]


def text_embedding(text: str) -> np.ndarray:
    """Named colours (weighted by order of mention) + hashed words and characters."""
    vec = np.zeros(DIM, np.float32)
    lo, hi = HASH_DIMS
    for token in _tokens(text):
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")
        vec[lo + h % (hi - lo)] += 1.0 if (h >> 32) & 1 else -1.0
    colors = colors_in_text(text)
    if colors:
        part = np.zeros(N_COLORS, np.float32)
        for rank, i in enumerate(colors):
            part[i] = 1.0 / (rank + 1)
        vec[:N_COLORS] = COLOR_WEIGHT * _unit(part)
        vec[lo:hi] = np.sqrt(1 - COLOR_WEIGHT**2) * _unit(vec[lo:hi])
    return _unit(vec)


def fit(vector: np.ndarray, dim: int) -> np.ndarray:
    """A 1024-d fake vector at width ``dim``: padded with zeros, or folded (dimension i sums
    every dimension congruent to i), so the colour dimensions keep their place."""
    if dim >= DIM:
        return np.concatenate([vector, np.zeros(dim - DIM, np.float32)])
    folded = np.zeros(dim, np.float32)
    np.add.at(folded, np.arange(DIM) % dim, vector)
    return _unit(folded)


@dataclass(frozen=True)
class EmbeddingModel:
    """What the documentation says one embedding model takes (``None``: not limited)."""

    dims: tuple[int, ...] | None  # widths it gives; None: any (a model we do not know)
    default: int
    max_contents: int | None
    max_images: int
    fusion: str | None = None  # "parameter", "content", "always"


_PLUS = (1152, 1024, 512, 256, 128, 64)
_FLASH = (768, 512, 256, 128, 64)
#: From Model Studio's "Multimodal embedding API" page. The tongyi models document 8 images
#: and "no element count limit, a token budget"; qwen3-vl-embedding 20 contents in all;
#: qwen2.5-vl-embedding fuses every request and takes each modality once.
EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    "multimodal-embedding-v1": EmbeddingModel((1024,), 1024, 1, 1),
    "tongyi-embedding-vision-plus": EmbeddingModel(_PLUS, 1152, None, 8),
    "tongyi-embedding-vision-flash": EmbeddingModel(_FLASH, 768, None, 8),
    "tongyi-embedding-vision-plus-2026-03-06": EmbeddingModel(_PLUS, 1152, None, 8, "content"),
    "tongyi-embedding-vision-flash-2026-03-06": EmbeddingModel(_FLASH, 768, None, 8, "content"),
    "qwen3-vl-embedding": EmbeddingModel(
        (2560, 2048, 1536, 1024, 768, 512, 256), 2560, 20, 20, "parameter"
    ),
    "qwen2.5-vl-embedding": EmbeddingModel((2048, 1024, 768, 512), 1024, 2, 1, "always"),
}
UNKNOWN_MODEL = EmbeddingModel(None, DIM, 1, 1)
#: Token budget of one tongyi request (the documentation names one, not its size).
MAX_REQUEST_TOKENS = 8192


def _text_tokens(text: str) -> int:
    return max(1, len(_tokens(text)))


@dataclass(frozen=True)
class Caption:
    """What the fake vision model sees in an image, in one language."""

    text: str
    keywords: list[str]
    answer: str  # the raw answer, in one of three layouts


def caption(image: Image.Image, language: str) -> Caption:
    """Describe ``image`` in ``language`` ("zh" or "en") by colours, brightness and shape."""
    shares = color_fractions(image)
    top = [int(i) for i in np.argsort(-shares, kind="stable")[:3]]
    brightness = float(np.asarray(image.convert("L"), dtype=np.float32).mean())
    w, h = image.size
    zh = language == "zh"
    names = [COLORS[i][1] if zh else COLORS[i][0] for i in top]
    bright = (
        ("明亮" if brightness >= 110 else "昏暗")
        if zh
        else ("bright" if brightness >= 110 else "dark")
    )
    shape = ("横向" if w >= h else "竖向") if zh else ("landscape" if w >= h else "portrait")
    if zh:
        text = f"一张以{names[0]}和{names[1]}为主、{bright}的{shape}照片，点缀着{names[2]}。"
    else:
        text = (
            f"A {bright} {shape} photo dominated by {names[0]} and {names[1]}, "
            f"with touches of {names[2]}."
        )
    keywords = [*names, bright, shape]
    digest = hashlib.blake2b(image.tobytes(), digest_size=4).digest()[0]
    layout = digest % 3
    if zh:
        answers = [
            f"描述：{text}\n关键词：{'、'.join(keywords)}",
            f"{text}\n\n**关键词：**\n" + "\n".join(f"{n}. {k}" for n, k in enumerate(keywords, 1)),
            f"1. 图片描述：{text}\n2. 关键词：{'，'.join([*keywords, '照片'])}",
        ]
    else:
        answers = [
            f"Description: {text}\nKeywords: {', '.join(keywords)}",
            f"{text}\n\nKeywords:\n" + "\n".join(f"- {k}" for k in keywords),
            f"**Description:** {text}\n**Keywords:** {'; '.join([*keywords, 'photo'])}",
        ]
    return Caption(text=text, keywords=keywords, answer=answers[layout])


#: Models that answer in the newer, markdown-heavy layouts.
MODERN_VL = ("qwen3-vl", "qwen-vl-max", "qwen3.5", "qwen3.6")


def modern_answer(cap: Caption, language: str, layout: int) -> str:
    """``cap`` as the current Qwen-VL models lay it out (as their documented examples and
    answers to this prompt do): bold labels with a full-width colon, markdown headings
    with a bulleted list, or plain labels with ASCII separators."""
    k = cap.keywords
    if language == "zh":
        answers = [
            f"**描述**：{cap.text}\n\n**关键词**：{'、'.join(k)}",
            f"## 图片描述\n{cap.text}\n\n## 关键词\n" + "\n".join(f"- {w}" for w in k),
            f"**图片描述：** {cap.text}  \n**关键词：** {' | '.join(k)}",
        ]
    else:
        answers = [
            f"**Description**: {cap.text}\n\n**Keywords**: {', '.join(k)}",
            f"## Description\n{cap.text}\n\n## Keywords\n" + "\n".join(f"- {w}" for w in k),
            f"**Description:** {cap.text}  \n**Keywords:** {' | '.join(k)}",
        ]
    return answers[layout % 3]


def answer_for(image: Image.Image, language: str, model: str | None) -> Caption:
    """The fake vision model's caption of ``image``, in the layouts ``model`` answers in."""
    cap = caption(image, language)
    if not (model or "").startswith(MODERN_VL):
        return cap
    layout = hashlib.blake2b(image.tobytes(), digest_size=4).digest()[1]
    return Caption(cap.text, cap.keywords, modern_answer(cap, language, layout))


def prompt_language(prompt: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", prompt) else "en"


# -- the server -----------------------------------------------------------------------------------


@dataclass
class LoggedRequest:
    """One request as the server saw it."""

    t: float  # time.monotonic() on arrival (same clock as the client: same process)
    path: str
    status: int = 0
    fault: str | None = None
    model: str | None = None
    kind: str = ""  # "image", "text", "fusion", "mixed" (several kinds), "describe"
    auth: str = ""
    prompt: str | None = None
    image_chars: int = 0  # of the largest image
    items: int = 0  # contents of an embedding request
    images: int = 0  # images in it
    params: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None
    end: float = 0.0


@dataclass
class Fault:
    """A scripted failure: "429", "429:2" (with Retry-After: 2), "500", "503", "400", "401", "404",
    "hang" (answer only after the client's timeout), "drop" (close without answering)."""

    kind: str
    path: str | None = None  # only requests to this path take it


class FakeServer:
    """A threaded HTTP server on 127.0.0.1 with a fault plan and a request log."""

    def __init__(
        self, *, api_key: str | None = "sk-fake-0123456789", latency: float = 0.0, hang: float = 3.0
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.hang_seconds = hang
        self.log: list[LoggedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: deque[Fault] = deque()
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = ("429", "500", "hang")
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> FakeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting and inspection
    def plan(self, *faults: str, path: str | None = None) -> None:
        """Queue faults; each is served to the next request (to ``path``, if given)."""
        with self._lock:
            self._faults.extend(Fault(f, path) for f in faults)

    def requests(self, path: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if path is None or r.path == path]

    def random_faults(
        self, rate: float, kinds: tuple[str, ...] = ("429", "500", "hang"), seed: int = 0
    ) -> None:
        """Fail this share of the requests that have no scripted fault, picked at random."""
        with self._lock:
            self.fault_rate, self.fault_kinds, self._rng = rate, kinds, random.Random(seed)

    def faults_left(self) -> int:
        with self._lock:
            return len(self._faults)

    # -- serving
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path is None or fault.path == path:
                    self._faults.remove(fault)
                    return fault
            if self.fault_rate and self._rng.random() < self.fault_rate:
                return Fault(self._rng.choice(self.fault_kinds))
        return None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        entry = LoggedRequest(t=time.monotonic(), path=h.path.split("?")[0])
        with self._lock:
            self.log.append(entry)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        answered = False  # counted out before the answer goes: a client may send its
        # next request the moment it reads this one's, before this thread gets further
        try:
            length = int(h.headers.get("Content-Length") or 0)
            body = h.rfile.read(length) if length else b""
            entry.auth = h.headers.get("Authorization", "")
            fault = self._take_fault(entry.path)
            entry.fault = fault.kind if fault else None
            if self.latency:
                time.sleep(self.latency)
            if fault is not None and fault.kind == "drop":
                entry.status = -1
                h.close_connection = True
                return
            if fault is not None and fault.kind == "hang":
                self._stop.wait(self.hang_seconds)
            status, headers, payload = self._respond(entry, fault, body)
            entry.status = status
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            with self._lock:
                self.in_flight -= 1
                answered = True
            try:
                h.send_response(status)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    h.send_header(k, v)
                h.end_headers()
                h.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a "hang" past its timeout)
        finally:
            entry.end = time.monotonic()
            with self._lock:
                self.in_flight -= 0 if answered else 1

    def _respond(
        self, entry: LoggedRequest, fault: Fault | None, body: bytes
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        key_ok = self.api_key is None or entry.auth == f"Bearer {self.api_key}"
        if not key_ok or (fault is not None and fault.kind == "401"):
            return self.error(401, entry)
        if fault is not None and fault.kind.split(":")[0] in ("400", "404", "429", "500", "503"):
            status = int(fault.kind.split(":")[0])
            headers = {}
            if status == 429 and ":" in fault.kind:
                headers["Retry-After"] = fault.kind.split(":")[1]
            return self.error(status, entry, headers)
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return self.error(400, entry, message="The request body is not valid JSON.")
        return self.handle(entry, request)

    # -- the protocol (DashScope's; FakeOpenAI overrides these)
    def handle(
        self, entry: LoggedRequest, request: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        entry.model = request.get("model")
        if not entry.model:
            return self.error(400, entry, message="Model not specified.")
        try:
            if entry.path == EMBEDDING_PATH:
                return 200, {}, self._embedding(entry, request)
            if entry.path == GENERATION_PATH:
                return 200, {}, self._generation(entry, request)
        except InspectionError as exc:
            return self.error(400, entry, message=str(exc), code="DataInspectionFailed")
        except ValueError as exc:
            return self.error(400, entry, message=str(exc))
        return self.error(404, entry, message=f"Path {entry.path} not found.")

    def _image(self, entry: LoggedRequest, uri: str) -> Image.Image:
        entry.image_chars = max(entry.image_chars, len(uri))
        if len(uri) > MAX_IMAGE_CHARS:
            raise ValueError("The image size exceeds the limit of 3MB.")
        image = decode_data_uri(uri)
        if min(image.size) <= MIN_IMAGE_SIDE:
            raise ValueError(
                f"The image length and width must be larger than {MIN_IMAGE_SIDE} pixels "
                f"(got {image.width}x{image.height})."
            )
        return image

    def _embedding(self, entry: LoggedRequest, request: dict[str, Any]) -> dict[str, Any]:
        spec = EMBEDDING_MODELS.get(entry.model or "", UNKNOWN_MODEL)
        contents = (request.get("input") or {}).get("contents")
        params = request.get("parameters") or {}
        entry.params = dict(params)
        if not isinstance(contents, list) or not contents:
            raise ValueError("input.contents must be a non-empty list.")
        dim = self._dimension(entry, spec, params)
        if params.get("enable_fusion") and spec.fusion != "parameter":
            raise ValueError(f"Parameter enable_fusion is not supported by model {entry.model}.")
        self._count(entry, spec, contents)
        pairs = [self._content_vector(entry, spec, item) for item in contents]
        if spec.fusion == "always" or params.get("enable_fusion") is True:
            pairs = [(_unit(np.sum([v for v, _ in pairs], axis=0)), "fusion")]
        kinds = {kind for _, kind in pairs}
        entry.kind = kinds.pop() if len(kinds) == 1 else "mixed"
        texts = [c["text"] for c in contents if isinstance(c, dict) and "text" in c]
        return {
            "output": {
                "embeddings": [
                    {"index": i, "embedding": [float(x) for x in fit(v, dim)], "type": kind}
                    for i, (v, kind) in enumerate(pairs)
                ]
            },
            "usage": {
                "input_tokens": sum(_text_tokens(t) for t in texts),
                "image_tokens": 256 * entry.images,
                "image_count": entry.images,
                "duration": 1,
            },
            "request_id": str(uuid.uuid4()),
        }

    @staticmethod
    def _dimension(entry: LoggedRequest, spec: EmbeddingModel, params: dict[str, Any]) -> int:
        """The width asked for (``parameters.dimension``), if the model gives it."""
        dim = params.get("dimension")
        if dim is None:
            return spec.default
        if not isinstance(dim, int) or (spec.dims is not None and dim not in spec.dims):
            choices = ", ".join(map(str, spec.dims or ()))
            raise ValueError(f"Parameter dimension must be one of [{choices}] for {entry.model}.")
        return dim

    @staticmethod
    def _count(entry: LoggedRequest, spec: EmbeddingModel, contents: list[Any]) -> None:
        """Refuse a request over the model's limits, as DashScope does: all of it."""
        entry.items = len(contents)
        entry.images = sum(isinstance(c, dict) and "image" in c for c in contents)
        texts = [c["text"] for c in contents if isinstance(c, dict) and "text" in c]
        if spec.max_contents is not None and len(contents) > spec.max_contents:
            raise ValueError(
                f"The input contents exceed the limit: at most {spec.max_contents} per request."
            )
        if entry.images > spec.max_images:
            raise ValueError(f"Too many images: at most {spec.max_images} per request.")
        if spec.fusion == "always" and len(texts) > 1:
            raise ValueError("At most one text per request.")
        if sum(_text_tokens(t) for t in texts) > MAX_REQUEST_TOKENS:
            raise ValueError(f"The input exceeds {MAX_REQUEST_TOKENS} tokens.")

    def _content_vector(
        self, entry: LoggedRequest, spec: EmbeddingModel, item: Any
    ) -> tuple[np.ndarray, str]:
        """One content object's vector and type; an image and a text together are one
        fused vector where the model fuses by content."""
        if not isinstance(item, dict) or not ({"image", "text"} & set(item)):
            raise ValueError("Each content needs an image or a text.")
        if {"image", "text"} <= set(item) and spec.fusion != "content":
            raise ValueError("Each content must hold one of text, image or video.")
        vectors = []
        if "text" in item:
            if FLAGGED in str(item["text"]):
                raise InspectionError("Input data may contain inappropriate content.")
            vectors.append(text_embedding(str(item["text"])))
        if "image" in item:
            vectors.append(image_embedding(self._image(entry, item["image"])))
        if len(vectors) == 2:
            return _unit(vectors[0] + vectors[1]), "fusion"
        return vectors[0], "image" if "image" in item else "text"

    def _generation(self, entry: LoggedRequest, request: dict[str, Any]) -> dict[str, Any]:
        entry.kind = "describe"
        messages = (request.get("input") or {}).get("messages") or []
        content = messages[-1].get("content") if messages else None
        if not isinstance(content, list):
            raise ValueError("input.messages[-1].content must be a list.")
        images = [c["image"] for c in content if isinstance(c, dict) and "image" in c]
        texts = [c["text"] for c in content if isinstance(c, dict) and "text" in c]
        if len(images) != 1 or len(texts) != 1:
            raise ValueError("Expected one image and one text.")
        entry.prompt = texts[0]
        entry.params = dict(request.get("parameters") or {})
        cap = answer_for(self._image(entry, images[0]), prompt_language(texts[0]), entry.model)
        entry.answer = cap.answer
        message: dict[str, Any] = {"role": "assistant", "content": [{"text": cap.answer}]}
        if (entry.model or "").startswith(MODERN_VL):
            thinking = entry.params.get("enable_thinking") is True
            message["reasoning_content"] = "图片中主要是几种颜色……" if thinking else ""
        return {
            "output": {"choices": [{"finish_reason": "stop", "message": message}]},
            "usage": {"input_tokens": 300, "output_tokens": 40, "image_tokens": 256},
            "request_id": str(uuid.uuid4()),
        }

    def error(
        self,
        status: int,
        entry: LoggedRequest,
        headers: dict[str, str] | None = None,
        *,
        message: str | None = None,
        code: str | None = None,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """DashScope's documented error body for ``status`` (``code`` overrides its code)."""
        codes = {
            400: ("InvalidParameter", "The request is invalid."),
            401: ("InvalidApiKey", "Invalid API-key provided."),
            404: ("ModelNotFound", "Model not found."),
            429: ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
            500: ("InternalError", "An internal error has occured, please try again later."),
            503: ("ServiceUnavailable", "The service is temporarily unavailable."),
        }
        default_code, default = codes.get(status, ("InternalError", "Error."))
        code = code or default_code
        headers = dict(headers or {})
        if status == 429:
            headers.setdefault("X-RateLimit-Limit-Requests", "60")
            headers.setdefault("X-RateLimit-Remaining-Requests", "0")
            headers.setdefault("X-RateLimit-Reset-Requests", "1s")
        return (
            status,
            headers,
            {"code": code, "message": message or default, "request_id": str(uuid.uuid4())},
        )


FakeDashScope = FakeServer


def max_excess(times: list[float], rate: float, burst: float, slack: float) -> float:
    """max over windows [t_i, t_j] of count - (burst + rate * (t_j - t_i + slack)).

    A token bucket allows at most ``burst + rate * W`` requests in any window of length W;
    ``slack`` absorbs the scheduling jitter between a request leaving and arriving.
    Positive means the rate was exceeded.
    """
    ts = sorted(times)
    worst = float("-inf")
    for i in range(len(ts)):
        for j in range(i, len(ts)):
            worst = max(worst, (j - i + 1) - (burst + rate * (ts[j] - ts[i] + slack)))
    return worst
