"""OCR logic without the models: joining text, reading order, the gate on a fake detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from mmsearch.ocr import (
    OcrLine,
    TextGate,
    compose,
    gate_copy,
    join_pieces,
    largest_region,
    normalize,
    reading_order,
    tidy,
)


def box(x: float, y: float, w: float, h: float, degrees: float = 0.0) -> tuple:
    """Four corners, clockwise from the top left, of a w x h box at (x, y) turned about it."""
    a = math.radians(degrees)
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    return tuple(
        (x + cx * math.cos(a) - cy * math.sin(a), y + cx * math.sin(a) + cy * math.cos(a))
        for cx, cy in corners
    )


def line(text: str, x: float, y: float, w: float = 80, h: float = 30, **kw) -> OcrLine:
    return OcrLine(text, kw.pop("confidence", 0.99), box(x, y, w, h, **kw))


def test_chinese_pieces_join_without_spaces_english_with():
    assert join_pieces(["营业时间", "火锅"]) == "营业时间火锅"
    assert join_pieces(["Open", "24 hours"]) == "Open 24 hours"
    assert join_pieces(["营业时间", "10:00-22:00"]) == "营业时间 10:00-22:00"
    assert join_pieces(["免费", "WiFi", "密码"]) == "免费 WiFi 密码"
    assert join_pieces(["", "  Exit "]) == "Exit"


def test_tidy_removes_spaces_between_chinese_characters_only():
    assert tidy("欢迎 光临  Welcome   home") == "欢迎光临 Welcome home"
    assert tidy("合计 ： 42 元") == "合计： 42 元"


def test_normalize_folds_width_case_and_rows():
    assert normalize("ＳＡＬＥ 50％ OFF\n火锅 店") == "sale 50% off 火锅店"
    assert normalize("Open\n24 hours") == normalize("open 24 HOURS")


def test_reading_order_rows_top_to_bottom_left_to_right():
    lines = [
        line("Hours", 200, 100),
        line("Opening", 100, 102),
        line("Total", 100, 10),
        line("Invoice", 10, 12),
    ]
    rows = reading_order(lines)
    assert [[ln.text for ln in row] for row in rows] == [["Invoice", "Total"], ["Opening", "Hours"]]


def test_reading_order_undoes_the_slant_of_a_turned_sign():
    # Two words of one sign turned by 15 degrees: their centres are 40 px apart in height,
    # more than a line is high, yet they are one row.
    first = line("Emergency", 100, 100, w=150, degrees=15)
    second_x = 100 + 160 * math.cos(math.radians(15))
    second_y = 100 + 160 * math.sin(math.radians(15))
    second = line("Exit", second_x, second_y, w=60, degrees=15)
    below = line("Keep Right", 80, 180, w=150, degrees=15)
    rows = reading_order([below, second, first])
    assert [[ln.text for ln in row] for row in rows] == [["Emergency", "Exit"], ["Keep Right"]]


def test_compose_drops_unconfident_lines_and_weights_confidence_by_length():
    lines = [
        line("火锅", 10, 10, confidence=0.98),
        line("咖啡店", 100, 10, confidence=0.9),
        line("ljI", 10, 80, confidence=0.55),  # texture read as letters
    ]
    result = compose(lines, min_confidence=0.8)
    assert result.text == "火锅咖啡店"
    assert result.detected and len(result.lines) == 2 and len(result.boxes) == 2
    assert result.confidence == pytest.approx((2 * 0.98 + 3 * 0.9) / 5, abs=1e-4)
    assert compose([], 0.8).text == "" and compose([], 0.8).confidence == 0.0


def test_largest_region_measures_the_biggest_blob():
    prob = np.zeros((64, 64), np.float32)
    prob[5:8, 5:9] = 0.9  # 12 pixels
    prob[30:40, 10:30] = 0.6  # 200 pixels
    area, score = largest_region(prob, 0.3)
    assert area == 200 and score == pytest.approx(0.6)
    assert largest_region(np.zeros((8, 8), np.float32), 0.3) == (0, 0.0)


class FakeDetector:
    """Returns a probability map with a text blob where the image has red pixels."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        self.shapes.append(bgr.shape)
        red = (bgr[:, :, 2] > 200) & (bgr[:, :, 1] < 50)
        return np.where(red, 0.95, 0.02).astype(np.float32)


def test_gate_passes_images_with_a_text_like_region_only():
    detector = FakeDetector()
    gate = TextGate(detector, side=320, pixel=0.5, min_area=12)
    plain = Image.new("RGB", (1280, 960), "white")
    sign = plain.copy()
    sign.paste((255, 0, 0), (400, 400, 480, 440))  # 80x40 -> 20x10 gate pixels
    speck = plain.copy()
    speck.paste((255, 0, 0), (10, 10, 14, 14))  # one gate pixel: noise, not text
    assert [gate(plain), gate(sign), gate(speck)] == [False, True, False]
    assert all(s == (256, 320, 3) for s in detector.shapes)  # 320 long, 240 -> 256


def test_gate_copy_is_bgr_multiple_of_32_and_never_upscaled():
    image = Image.new("RGB", (200, 90), (10, 20, 30))
    small = gate_copy(image, 320)
    assert small.shape == (96, 192, 3) and tuple(small[0, 0]) == (30, 20, 10)
    assert gate_copy(Image.new("RGB", (12, 40)), 320) is None  # no readable text
