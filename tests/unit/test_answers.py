"""The prompt and the answer parser: the many ways models format a description and keywords."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmsearch.config import Language
from mmsearch.providers.answers import (
    MAX_KEYWORD_CHARS,
    PROMPT_EN,
    PROMPT_ZH,
    describe_prompt,
    parse_description,
)
from mmsearch.providers.base import ProviderError

from ..fake_dashscope import caption

#: (answer, description, keywords). The first twelve are the layouts seen from real models.
PARSE_CASES = [
    (
        "描述：一只狮子躺在草地上。\n关键词：狮子、草地、动物、野生、自然",
        "一只狮子躺在草地上。",
        ["狮子", "草地", "动物", "野生", "自然"],
    ),
    (
        "一只狮子躺在草地上。\n\n**关键词：**\n1. 狮子\n2. 草地\n3. 动物\n4. 野生\n5. 自然",
        "一只狮子躺在草地上。",
        ["狮子", "草地", "动物", "野生", "自然"],
    ),
    (
        "1. 图片描述：一只狮子。\n2. 关键词：狮子，草地，动物，野生，自然，阳光",
        "一只狮子。",
        ["狮子", "草地", "动物", "野生", "自然"],
    ),
    ("1. 描述：一只狮子。 2. 关键词：狮子；草地", "一只狮子。", ["狮子", "草地"]),
    ("关键词：狮子 草原 动物\n描述：一只狮子", "一只狮子", ["狮子", "草原", "动物"]),
    ("### 描述\n一只狮子。\n### 关键词\n狮子、草地、狮子", "一只狮子。", ["狮子", "草地"]),
    ("一只狮子躺在草地上。\n狮子、草地、动物", "一只狮子躺在草地上。", ["狮子", "草地", "动物"]),
    (
        "Description: A lion on grass.\nKeywords: lion, grass, wildlife, savanna, animal",
        "A lion on grass.",
        ["lion", "grass", "wildlife", "savanna", "animal"],
    ),
    ("A lion.\n\nKeywords:\n- lion\n- grass\n\nHope this helps!", "A lion.", ["lion", "grass"]),
    (
        "**Description:** A lion.\n**Keywords:** \"lion\"; 'grass'; #savanna",
        "A lion.",
        ["lion", "grass", "savanna"],
    ),
    (
        "A lion lying in 3.5 m of grass.\n1. lion\n2. grass\n3. wildlife",
        "A lion lying in 3.5 m of grass.",
        ["lion", "grass", "wildlife"],
    ),
    ("这是一只狮子。", "这是一只狮子。", []),
    # Line ends, labels and list marks of every kind.
    ("描述：一只狮子\r\n关键词：狮子、草地", "一只狮子", ["狮子", "草地"]),
    ("描述（50字以内）：一只狮子。\n关键词（5个）：狮子、草地", "一只狮子。", ["狮子", "草地"]),
    ("一、描述：一只狮子。\n二、关键词：狮子、草地", "一只狮子。", ["狮子", "草地"]),
    ("（1）描述：一只狮子。\n（2）关键词：狮子、草地", "一只狮子。", ["狮子", "草地"]),
    ("Description: A lion.\nTags: lion, grass", "A lion.", ["lion", "grass"]),
    ("Description: A lion.\nKey words: lion, grass", "A lion.", ["lion", "grass"]),
    ("Caption: A lion.\nKeywords: lion", "A lion.", ["lion"]),
    ("Summary: A lion.\nKeywords: lion", "A lion.", ["lion"]),
    ("描述：一只狮子。\n标签：狮子|草地|动物", "一只狮子。", ["狮子", "草地", "动物"]),
    ("`描述`：一只狮子\n__关键词__：狮子，草地", "一只狮子", ["狮子", "草地"]),
    ("# 描述\n一只狮子\n## 关键词\n狮子、草地", "一只狮子", ["狮子", "草地"]),
    ("A lion on grass. Keywords: lion, grass", "A lion on grass.", ["lion", "grass"]),
    ("Keywords: lion; grass\nDescription: A lion.", "A lion.", ["lion", "grass"]),
    ("A lion.\n* lion\n* grass", "A lion.", ["lion", "grass"]),
    ("A lion.\n• lion\n• grass", "A lion.", ["lion", "grass"]),
    # A description over several lines is one line; a space inside Chinese text goes.
    ("描述:\n一只狮子\n在草地上\n关键词:\n狮子, 草地", "一只狮子在草地上", ["狮子", "草地"]),
    ("描述：一只 狮子 躺在 草地上。\n关键词：狮子", "一只狮子躺在草地上。", ["狮子"]),
    # No description: the keywords stand in for it.
    ("关键词：狮子、草地", "狮子、草地", ["狮子", "草地"]),
    # Keywords: distinct (case-insensitively), at most five, no sentences, no labels.
    ("Keywords: lion, lion, LION, Lion, grass", "lion、grass", ["lion", "grass"]),
    ("Keywords: a, b, c, d, e, f, g", "a、b、c、d、e", ["a", "b", "c", "d", "e"]),
    (
        "描述：一只狮子。\n关键词：狮子、" + "很" * (MAX_KEYWORD_CHARS + 1) + "、草地",
        "一只狮子。",
        ["狮子", "草地"],
    ),
    ("描述：一只狮子。\n关键词：关键词、狮子", "一只狮子。", ["狮子"]),
    # Quotes and brackets around a text go; those that belong to it stay.
    ("描述：「一只狮子」\n关键词：《狮子》、【草地】", "一只狮子", ["狮子", "草地"]),
    ('Description: "A lion"\nKeywords: lion', "A lion", ["lion"]),
    ("描述：一只狮子（雄性）\n关键词：狮子", "一只狮子（雄性）", ["狮子"]),
    ("描述：《狮子王》里的辛巴\n关键词：狮子", "《狮子王》里的辛巴", ["狮子"]),
    ("描述：《狮子王》和《小鹿斑比》\n关键词：(狮子)", "《狮子王》和《小鹿斑比》", ["狮子"]),
    (
        "Description: A lion (male)\nKeywords: lion (male), grass",
        "A lion (male)",
        ["lion (male)", "grass"],
    ),
    # A list mark left at the end of the description goes; a number the text ends with stays.
    ("描述：一只狮子。2.\n关键词：狮子", "一只狮子。", ["狮子"]),
    ("Description: A lion. 2.\nKeywords: lion", "A lion.", ["lion"]),
    ("描述：一只狮子 -\n关键词：狮子", "一只狮子", ["狮子"]),
    ("描述：一只狮子(2)\n关键词：狮子", "一只狮子", ["狮子"]),
    ("描述：一张拍摄于2019.\n关键词：照片", "一张拍摄于2019.", ["照片"]),
    (
        "Description: Players wearing number 10.\nKeywords: sport",
        "Players wearing number 10.",
        ["sport"],
    ),
    ("Description: Pi is 3.14.\nKeywords: math", "Pi is 3.14.", ["math"]),
    ("描述：他排名第十.\n关键词：比赛", "他排名第十.", ["比赛"]),
    # Without a label, a single list item or an all-list answer is not a keyword list.
    ("A lion\n1. lion", "A lion lion", []),
    ("1) A lion.\n2) lion\n3) grass", "A lion. lion grass", []),
]


@pytest.mark.parametrize(("answer", "text", "keywords"), PARSE_CASES)
def test_answers_parse_into_description_and_keywords(answer, text, keywords):
    parsed = parse_description(answer)
    assert parsed.text == text
    assert parsed.keywords == keywords


@pytest.mark.parametrize("answer", ["", "  \n ", "\r\n", None])
def test_empty_answer_is_an_error(answer):
    with pytest.raises(ProviderError, match="empty answer"):
        parse_description(answer)


@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_fake_servers_layouts_parse_back(language):
    """Every layout the protocol-server tests rely on parses into what the fake model meant."""
    rng = np.random.default_rng(0)
    for i in range(30):
        image = Image.fromarray(rng.integers(0, 256, (8 + i % 3, 8 + i % 5, 3), np.uint8))
        meant = caption(image, language)
        parsed = parse_description(meant.answer)
        assert (parsed.text, parsed.keywords) == (meant.text, meant.keywords), meant.answer


def test_prompt_follows_the_language():
    assert describe_prompt("en") == describe_prompt(Language.en) == PROMPT_EN
    assert describe_prompt("zh") == describe_prompt(Language.zh) == PROMPT_ZH
    assert "50" in PROMPT_ZH and "5" in PROMPT_EN
    with pytest.raises(ValueError):
        describe_prompt("fr")
