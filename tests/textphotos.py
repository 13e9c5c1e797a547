"""Real photos with sign, poster, receipt and screenshot text written on them, built by the
tests and the OCR bench into a folder they choose (never into the project, never downloaded).

Each generated photo comes twice: with its text (``text/NNNN.jpg``) and as it was, without
any (``plain/NNNN.jpg``), so that a search for the words can be checked to rank the photo
with the text above its text-free copy. What was written goes into ``truth.jsonl`` beside
them and is returned as ``TextPhoto`` records.

The text varies as text in photos does: Chinese and English, 1-6 words, several fonts from
Debian's font packages (whatever of ``FONTS`` is installed), sizes 16-56 px on a 640 px
photo, any colour with enough contrast, on a sign board, with an outline or plain on the
photo, rotated up to 15 degrees, and sometimes crossed by a thin bar (a pole, a cable).
The fonts and photos are parameters, so a held-out corpus can use others.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps, ImageStat

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FLICKR = DATASETS / "flickr8k_cn" / "images"
IMAGENET = DATASETS / "imagenet_sample" / "images"

_TT = "/usr/share/fonts/truetype"
#: name -> (path, writes Chinese, writes Latin). Debian packages: fonts-wqy-zenhei,
#: fonts-wqy-microhei, fonts-arphic-ukai, fonts-arphic-uming, fonts-droid-fallback (Chinese
#: only: it has no Latin letters), fonts-dejavu-core, fonts-liberation, fonts-noto-cjk.
FONTS: dict[str, tuple[str, bool, bool]] = {
    "wqy-zenhei": (f"{_TT}/wqy/wqy-zenhei.ttc", True, True),
    "wqy-microhei": (f"{_TT}/wqy/wqy-microhei.ttc", True, True),
    "arphic-ukai": (f"{_TT}/arphic/ukai.ttc", True, True),
    "arphic-uming": (f"{_TT}/arphic/uming.ttc", True, True),
    "droid-fallback": (f"{_TT}/droid/DroidSansFallbackFull.ttf", True, False),
    "dejavu-sans": (f"{_TT}/dejavu/DejaVuSans.ttf", False, True),
    "dejavu-sans-bold": (f"{_TT}/dejavu/DejaVuSans-Bold.ttf", False, True),
    "dejavu-serif": (f"{_TT}/dejavu/DejaVuSerif.ttf", False, True),
    "dejavu-sans-condensed": (f"{_TT}/dejavu/DejaVuSansCondensed.ttf", False, True),
    "liberation-sans": (f"{_TT}/liberation/LiberationSans-Regular.ttf", False, True),
    "liberation-serif-bold": (f"{_TT}/liberation/LiberationSerif-Bold.ttf", False, True),
    "liberation-mono": (f"{_TT}/liberation/LiberationMono-Regular.ttf", False, True),
    "noto-sans-cjk": ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", True, True),
    "noto-serif-cjk-bold": ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc", True, True),
}

#: Words of signs, shop fronts, posters, receipts and app screens. A phrase is 1-3 of these
#: (1-6 words); Chinese words are written without spaces, as signs write them.
_ZH = (
    "火锅 咖啡 出口 入口 停车场 营业时间 欢迎光临 安全出口 禁止吸烟 小心地滑 请勿触摸 "
    "收银台 洗手间 地铁站 售票处 便利店 面包店 奶茶 超市 药店 银行 餐厅 酒店 医院 书店 "
    "水果 烧烤 新品上市 限时优惠 会员专享 全场五折 发票 合计 现金 找零 订单编号 支付成功 "
    "登录 密码 设置 下载完成 网络错误 电梯 楼梯 会议室 办公室 正在施工 免费停车 牛肉面 "
    "麻辣烫 饺子 外卖 打包 候车室 问讯处 充电站 早餐 午餐 晚餐 特价 促销 开业大吉 "
    "学校 公园 厕所 健身房 花店 理发 眼镜 手机 蛋糕 啤酒"
)
ZH_WORDS = tuple(_ZH.split())
_EN = (
    "Invoice|Total|Exit|Open 24 hours|Sale 50% off|Welcome|Coffee|Free WiFi|No Parking|"
    "Emergency Exit|Thank you|Closed on Sundays|Fresh Bakery|Order Number|Amount Due|"
    "Subtotal|Receipt|Meeting Room|Push|Pull|Restrooms|Pharmacy|Bus Stop|Grand Opening|"
    "Happy Hour|Buy one get one free|Wet Floor|Do not enter|Staff only|Check In|Departures|"
    "Gate 12|Platform 3|Download complete|Settings|Password|Sign in|Payment successful|"
    "Order confirmed|Connection lost|Parking|Hotel|Pizza|Books|Fresh Fruit|Noodles|"
    "Ice Cream|Tickets|Information|Elevator|Keep Right|Hot Pot|Cash only|Tax included|"
    "Hair Salon|Flowers|Burgers|Breakfast|Lunch Special|New Arrivals|Members only|"
    "Customer Service|Lost and Found|Taxi|Bakery|Pet Shop|Car Wash|Fitness Center"
)
EN_WORDS = tuple(_EN.split("|"))

_STYLES = ("board", "board", "outline", "plain", "card")


@dataclass
class TextPhoto:
    """One generated photo: where it and its text-free copy are, and what was written."""

    path: Path
    plain_path: Path
    source: str  # the data set photo it was made from
    lang: str  # "zh" or "en"
    #: The phrases written, one per line of text, as a user would type them.
    phrases: list[str]
    #: The two-character Chinese words among them (for single-word queries).
    words: list[str] = field(default_factory=list)
    font: str = ""
    size: int = 0
    angle: float = 0.0
    style: str = ""
    occluded: bool = False


def available_fonts(names: Sequence[str] | None = None) -> dict[str, tuple[str, bool, bool]]:
    """The fonts of ``FONTS`` (or of ``names``) that are installed here."""
    chosen = FONTS if names is None else {n: FONTS[n] for n in names}
    return {n: v for n, v in chosen.items() if Path(v[0]).exists()}


def dataset_photos(folder: Path = FLICKR) -> list[Path]:
    """The photos of a data set folder, sorted; an empty list when it is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})


def make_corpus(
    out: Path,
    n: int = 200,
    *,
    photos: Sequence[Path] | None = None,
    fonts: dict[str, tuple[str, bool, bool]] | None = None,
    seed: int = 0,
    side: int = 640,
    zh_share: float = 0.5,
) -> list[TextPhoto]:
    """Write ``n`` photos with text and their text-free copies under ``out``.

    Photos are drawn (without repeats while they last) from ``photos`` (default: the
    flickr8k_cn images), fonts from ``fonts`` (default: every installed font of ``FONTS``);
    a Chinese phrase needs a font that writes Chinese, so at least one must be installed
    (Debian: fonts-wqy-zenhei). Deterministic for a seed.
    """
    photos = list(photos if photos is not None else dataset_photos())
    fonts = fonts if fonts is not None else available_fonts()
    if not photos:
        raise FileNotFoundError(f"no photos to write on (looked in {FLICKR})")
    if not any(zh for _, zh, _ in fonts.values()) or not any(en for *_, en in fonts.values()):
        raise FileNotFoundError("needs fonts for Chinese and English (fonts-wqy-zenhei)")
    rng = random.Random(seed)
    picks = rng.sample(photos, n) if n <= len(photos) else [rng.choice(photos) for _ in range(n)]
    (out / "text").mkdir(parents=True, exist_ok=True)
    (out / "plain").mkdir(parents=True, exist_ok=True)
    records = []
    for i, source in enumerate(picks):
        lang = "zh" if rng.random() < zh_share else "en"
        records.append(_one(out, i, source, lang, fonts, rng, side))
    with (out / "truth.jsonl").open("w", encoding="utf-8") as fh:
        for rec in records:
            row = {**asdict(rec), "path": str(rec.path), "plain_path": str(rec.plain_path)}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return records


def _one(
    out: Path,
    i: int,
    source: Path,
    lang: str,
    fonts: dict[str, tuple[str, bool, bool]],
    rng: random.Random,
    side: int,
) -> TextPhoto:
    """One photo: pick what to write and how, draw it, save both copies."""
    photo = _fit(Image.open(source), side)
    names = sorted(n for n, (_, zh, en) in fonts.items() if (zh if lang == "zh" else en))
    font = rng.choice(names)
    style = rng.choice(_STYLES)
    lines = [_phrase(lang, rng) for _ in range(3 if style == "card" else rng.choice((1, 1, 2)))]
    size = rng.randint(*{"card": (16, 30), "plain": (24, 56)}.get(style, (18, 56)))
    angle = rng.uniform(-15, 15) if rng.random() < 0.5 else rng.uniform(-3, 3)
    occluded = rng.random() < 0.2
    with_text, size = _draw(photo, lines, fonts[font][0], size, angle, style, occluded, rng)
    rec = TextPhoto(
        path=out / "text" / f"{i:04d}.jpg",
        plain_path=out / "plain" / f"{i:04d}.jpg",
        source=source.name,
        lang=lang,
        phrases=lines,
        words=sorted({w for line in lines for w in _zh_words(line)}),
        font=font,
        size=size,
        angle=round(angle, 1),
        style=style,
        occluded=occluded,
    )
    with_text.save(rec.path, quality=90)
    photo.save(rec.plain_path, quality=90)
    return rec


def _fit(image: Image.Image, side: int) -> Image.Image:
    """The photo upright in RGB with its long side ``side`` px."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _phrase(lang: str, rng: random.Random) -> str:
    """1-3 vocabulary entries: at most 6 words in English, at most 8 characters in Chinese
    (a shop's board, a receipt line)."""
    while True:
        if lang == "zh":
            text = "".join(rng.sample(ZH_WORDS, rng.choice((1, 1, 2))))
            if len(text) <= 8:
                return text
        else:
            text = " ".join(rng.sample(EN_WORDS, rng.choice((1, 1, 2))))
            if len(text.split()) <= 6:
                return text


def _zh_words(line: str) -> list[str]:
    """The two-character vocabulary words written in a Chinese line."""
    return [w for w in ZH_WORDS if len(w) == 2 and w in line]


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _draw(
    photo: Image.Image,
    lines: list[str],
    font_path: str,
    size: int,
    angle: float,
    style: str,
    occluded: bool,
    rng: random.Random,
) -> tuple[Image.Image, int]:
    """The photo with the lines drawn on a transparent layer, turned by ``angle`` and pasted
    anywhere it fits whole; the font shrinks until it does. The colours are chosen for the
    place it lands on, as a sign's maker would. Returns the image and the size used."""
    while True:  # the sign fits in the photo: a smaller font until it does
        font = _font(font_path, size)
        width, height = _text_layer(lines, font, style, ((0,) * 4, (0,) * 4)).size
        turned = _turned_size(width, height, angle)
        if size <= 14 or (turned[0] <= photo.width and turned[1] <= photo.height):
            break
        size = max(14, int(size * 0.85))
    room_x, room_y = photo.width - turned[0], photo.height - turned[1]
    x, y = rng.randint(0, max(0, room_x)), rng.randint(0, max(0, room_y))
    under = photo.crop((max(0, x), max(0, y), x + turned[0], y + turned[1]))
    layer = _text_layer(lines, font, style, _colours(under, style, rng))
    if occluded:
        _occlude(layer, size, rng)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    out = photo.copy()
    out.paste(layer, (x, y), layer)
    return out, size


def _turned_size(width: int, height: int, angle: float) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` layer after ``Image.rotate(expand=True)``."""
    probe = Image.new("1", (width, height)).rotate(angle, expand=True)
    return probe.size


def _text_layer(
    lines: list[str], font: ImageFont.FreeTypeFont, style: str, colours: tuple[tuple, tuple]
) -> Image.Image:
    """The text of one sign, board or card, unturned, on a transparent background."""
    boxes = [font.getbbox(line) for line in lines]
    gap = font.size // 3
    pad = font.size // 2 if style in ("board", "card") else font.size // 6 + 3
    width = max(b[2] - b[0] for b in boxes) + 2 * pad
    height = sum(b[3] - b[1] for b in boxes) + gap * (len(lines) - 1) + 2 * pad
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    ink, ground = colours
    if style in ("board", "card"):
        draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=pad // 2, fill=ground)
    stroke = max(1, font.size // 12) if style == "outline" else 0
    y = pad
    for line, box in zip(lines, boxes, strict=True):
        x = pad if style == "card" else (width - (box[2] - box[0])) // 2
        draw.text(
            (x - box[0], y - box[1]),
            line,
            font=font,
            fill=ink,
            stroke_width=stroke,
            stroke_fill=ground,
        )
        y += box[3] - box[1] + gap
    return layer


def _colours(under: Image.Image, style: str, rng: random.Random) -> tuple[tuple, tuple]:
    """(ink, ground) with a luminance gap a reader would accept. ``plain`` text has the
    photo as ground, so its ink is set against the mean brightness of what lies under it."""
    if style == "card":  # a receipt or an app screen: dark on light or light on dark
        light, dark = (rng.randint(235, 255),) * 3, (rng.randint(0, 50),) * 3
        return (
            (dark + (255,), light + (245,))
            if rng.random() < 0.7
            else (light + (255,), dark + (245,))
        )
    if style == "plain":  # near white on a dark place, near black on a light one
        mean = ImageStat.Stat(under.convert("RGB")).mean if under.width and under.height else [0]
        level = rng.randint(0, 40) if _luma(mean * 3) > 128 else rng.randint(215, 255)
        ink = tuple(min(255, max(0, level + rng.randint(-15, 15))) for _ in range(3))
        return ink + (255,), (255 - level,) * 3 + (0,)
    while True:
        ink = tuple(rng.randint(0, 255) for _ in range(3))
        ground = tuple(rng.randint(0, 255) for _ in range(3)) + (255,)
        if abs(_luma(ink) - _luma(ground)) >= 110:
            return ink + (255,), ground


def _luma(colour: tuple) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _occlude(layer: Image.Image, size: int, rng: random.Random) -> None:
    """A thin bar across the text (a pole, a cable): thinner than a stroke-heavy glyph is
    tall, so the text stays readable to a person."""
    draw = ImageDraw.Draw(layer)
    width = max(2, round(size * rng.uniform(0.08, 0.18)))
    colour = tuple(rng.randint(0, 255) for _ in range(3)) + (255,)
    if rng.random() < 0.5:  # a near-vertical pole
        x = rng.uniform(0.2, 0.8) * layer.width
        tilt = math.tan(math.radians(rng.uniform(-20, 20))) * layer.height
        draw.line((x, 0, x + tilt, layer.height), fill=colour, width=width)
    else:  # a cable, slanting through the text
        y0, y1 = rng.uniform(0.2, 0.8) * layer.height, rng.uniform(0.2, 0.8) * layer.height
        draw.line((0, y0, layer.width, y1), fill=colour, width=width)


def load_truth(folder: Path) -> list[TextPhoto]:
    """The records ``make_corpus`` wrote to ``folder/truth.jsonl``."""
    lines = (folder / "truth.jsonl").read_text(encoding="utf-8").splitlines()
    records = []
    for line in lines:
        row = json.loads(line)
        row["path"], row["plain_path"] = Path(row["path"]), Path(row["plain_path"])
        records.append(TextPhoto(**row))
    return records
