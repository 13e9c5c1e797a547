"""What the describers ask a vision model, and how its answer is read.

The prompt is the reference's (Chinese or English): a description within 50 characters,
then five keywords. Models follow it loosely, so ``parse_description`` reads the many ways
they actually format the answer: "描述：…\\n关键词：a、b、c", "Keywords: a, b, c", numbered
or bulleted lists, markdown bold and headings, everything on one line, the keywords first.
"""

from __future__ import annotations

import re

from mmsearch.config import Language
from mmsearch.providers.base import Description, ProviderError

#: The reference prompt: a description within 50 characters, then five keywords.
PROMPT_ZH = (
    "请仔细观察这张图片。先用一句话描述图片内容，不超过50个字；再给出5个关键词。\n"
    "请严格按以下格式回答，不要输出其他内容：\n"
    "描述：<图片描述>\n"
    "关键词：<关键词1>、<关键词2>、<关键词3>、<关键词4>、<关键词5>"
)
#: The English equivalent (about as long as 50 Chinese characters).
PROMPT_EN = (
    "Look carefully at this image. First describe it in one sentence of at most 30 words; "
    "then give 5 keywords.\n"
    "Answer in exactly this format and write nothing else:\n"
    "Description: <description>\n"
    "Keywords: <keyword 1>, <keyword 2>, <keyword 3>, <keyword 4>, <keyword 5>"
)
MAX_KEYWORDS = 5
#: A "keyword" longer than this is a sentence the model added, not a keyword.
MAX_KEYWORD_CHARS = 40
#: More space-separated words than this on a keyword line are a sentence, not keywords.
MAX_SPACED_KEYWORDS = 8


def describe_prompt(language: Language | str) -> str:
    """The prompt in ``language``: the answer comes back in the language it is asked in."""
    return PROMPT_EN if Language(language) is Language.en else PROMPT_ZH


# -- the marks and labels models use ----------------------------------------------------------

#: Numbers that start a list item: "1." "2、" "3)" but not "3.5"; "一、".
_NUMBER_MARK = r"\d{1,2}\s*[.、)）:：](?!\d)|[一二三四五六七八九十]\s*[、.)）]"
#: "(1)" "（2）" and bullets: marks that stand apart from the text around them.
_SEPARATE_MARK = r"[（(]\d{1,2}[)）]|[-*•·>+]"
_NUMBERING = rf"(?:{_NUMBER_MARK}|{_SEPARATE_MARK})"
_LEADING_MARK = re.compile(rf"^\s*(?:{_NUMBERING}\s*)+")
#: A list mark left at the end of a description by a one-line answer ("…。2." before a
#: keyword label the label did not take). A number or "十." counts only at the start or
#: after a sentence's end, so that "taken in 2019.", "number 10." and "排名第十." keep it.
_TRAILING_MARK = re.compile(
    rf"(?:(?:^|(?<=[。！？；!?;])|(?<=\.\s))\s*(?:{_NUMBER_MARK})|\s*(?:{_SEPARATE_MARK}))\s*$"
)
#: A parenthetical after a label: "关键词（5个）：", "Keywords (comma separated):".
_LABEL_NOTE = r"(?:[(（][^)）\n]{0,20}[)）])?"
#: A keyword label, after the list number of its item if on the same line ("2. 关键词："),
#: but not after a number that ends the line before ("number 10.\nKeywords:") or a decimal
#: ("3.14. Keywords:"): those belong to the description.
_KEYWORD_LABEL = re.compile(
    r"(?:^|(?<=[\s。.!?！？;；，,]))"
    rf"(?:(?<!\d[.,]){_NUMBERING}[ \t]*)?"
    r"(?:关键词|关键字|关键信息|标签|key\s*words?|tags?)"
    rf"\s*{_LABEL_NOTE}\s*(?:[:：]|$)",
    re.IGNORECASE | re.MULTILINE,
)
_DESCRIPTION_WORDS = r"(?:图片描述|图像描述|内容描述|描述|简介|说明|description|caption|summary)"
_DESCRIPTION_LABEL = re.compile(
    rf"^\s*{_DESCRIPTION_WORDS}\s*{_LABEL_NOTE}\s*(?:[:：]\s*|$)", re.IGNORECASE
)
#: A description label at the start of a line, after the numbering: where a description
#: that follows the keywords begins.
_DESCRIPTION_LINE = re.compile(
    rf"^\s*(?:{_NUMBERING}\s*)?{_DESCRIPTION_WORDS}\s*{_LABEL_NOTE}\s*(?:[:：]|$)",
    re.IGNORECASE | re.MULTILINE,
)
_SEPARATORS = re.compile(r"[\n,，、;；|]+")
#: A space between Chinese characters: a model's line wrap or padding, not a word break.
_CJK_GAP = re.compile(r"(?<=[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef])\s+(?=[\u4e00-\u9fff])")
#: Brackets and quotes stripped from the ends of a description or keyword, unless their
#: partner is inside it ("一只狮子（雄性）", "《狮子王》里的辛巴").
_PAIRS = {
    "“": "”", "‘": "’", "「": "」", "『": "』", "《": "》",
    "【": "】", "[": "]", "(": ")", "（": "）", "<": ">",
}  # fmt: skip
_OPENERS_OF = {close: open_ for open_, close in _PAIRS.items()}
#: Marks that are their own partner, stripped from either end whatever the text holds.
_SYMMETRIC_QUOTES = "\"'`#"


# -- the parser ---------------------------------------------------------------------------------


def parse_description(answer: str) -> Description:
    """The model's answer as a description and at most five keywords.

    The keyword part starts at a keyword label; without one, a last line of separated words
    or a trailing list is taken as the keywords. With no description, the keywords stand in
    for it. Raises ``ProviderError`` for an empty answer.
    """
    text = _clean_markdown(answer or "").strip()
    if not text:
        raise ProviderError("the model returned an empty answer")
    label = _KEYWORD_LABEL.search(text)
    description_part, keyword_part = (
        _split_at_label(text, label) if label else _split_unlabelled(text)
    )
    keywords = _split_keywords(keyword_part)
    description = _clean_description(description_part)
    if not description:
        description = "、".join(keywords) if keywords else _clean_description(text)
    return Description(text=description, keywords=keywords)


def _clean_markdown(answer: str) -> str:
    """Unify line ends and drop bold, italics, code ticks and heading marks."""
    text = answer.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\*\*|__|`", "", text)
    return re.sub(r"(?m)^\s*#{1,6}\s*", "", text)


def _split_at_label(text: str, label: re.Match[str]) -> tuple[str, str]:
    """Split at the keyword label; a description label after it ("关键词：…\\n描述：…")
    starts a description that came second."""
    description_part, keyword_part = text[: label.start()], text[label.end() :]
    later = _DESCRIPTION_LINE.search(keyword_part)
    if later:
        description_part += "\n" + keyword_part[later.start() :]
        keyword_part = keyword_part[: later.start()]
    return description_part, keyword_part


def _split_unlabelled(text: str) -> tuple[str, str]:
    """No keyword label: the keywords are a last line of separated words ("狮子、草地、动物")
    or a trailing list of at least two short items; otherwise there are none."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    last = lines[-1] if lines else ""
    if len(lines) >= 2 and len(last) <= 120 and len(_SEPARATORS.findall(last)) >= 2:
        return "\n".join(lines[:-1]), last
    tail = _list_tail(lines)
    if 2 <= tail < len(lines):
        return "\n".join(lines[:-tail]), "\n".join(lines[-tail:])
    return text, ""


def _list_tail(lines: list[str]) -> int:
    """How many of the last lines are short list items ("1. lion", "- grass")."""
    count = 0
    for line in reversed(lines):
        if not (_LEADING_MARK.match(line) and len(line.strip()) <= MAX_KEYWORD_CHARS + 6):
            break
        count += 1
    return count


def _clean_description(part: str) -> str:
    """The description part as one line, without list marks, labels or quotes."""
    lines = []
    for raw in part.split("\n"):
        line = _LEADING_MARK.sub("", raw).strip()
        line = _DESCRIPTION_LABEL.sub("", line).strip()
        if line:
            lines.append(line)
    text = " ".join(lines)
    text = _TRAILING_MARK.sub("", text).strip()
    text = _CJK_GAP.sub("", text)
    return _strip_quotes(text, " ").strip()


def _split_keywords(part: str) -> list[str]:
    """Up to ``MAX_KEYWORDS`` distinct keywords (case-insensitively), in the model's order."""
    keywords: list[str] = []
    seen: set[str] = set()
    for piece in _keyword_pieces(part):
        word = _clean_keyword(piece)
        if word is None or word.casefold() in seen:
            continue
        seen.add(word.casefold())
        keywords.append(word)
        if len(keywords) == MAX_KEYWORDS:
            break
    return keywords


def _keyword_pieces(part: str) -> list[str]:
    """The candidate keywords of the first paragraph (later ones are the model's chatter)."""
    blocks = [b for b in re.split(r"\n\s*\n", part.strip()) if b.strip()]
    if not blocks:
        return []
    pieces = [p for p in _SEPARATORS.split(blocks[0]) if p.strip()]
    if len(pieces) == 1 and 1 < len(pieces[0].split()) <= MAX_SPACED_KEYWORDS:
        return pieces[0].split()  # "关键词：狮子 草原 动物": spaces as separators
    return pieces


def _clean_keyword(piece: str) -> str | None:
    """A piece without list marks, quotes and end punctuation; ``None`` if it is empty, a
    sentence rather than a keyword, or a label ("关键词")."""
    word = _LEADING_MARK.sub("", piece).strip()
    word = _strip_quotes(word, " \t。.!！?？:：").strip()
    if not word or len(word) > MAX_KEYWORD_CHARS or _KEYWORD_LABEL.fullmatch(word):
        return None
    return word


# -- quotes and brackets around a text ---------------------------------------------------------


def _strip_quotes(text: str, chars: str) -> str:
    """``text`` without ``chars``, quotes and brackets at its ends, repeatedly.

    A bracket whose partner is inside the text belongs to it and stays: "一只狮子（雄性）"
    keeps its parenthesis, where a plain ``str.strip`` would leave "一只狮子（雄性".
    """
    while True:
        inner = text.strip(chars)
        if _wrapped(inner):
            inner = inner[1:-1]
        else:
            if inner and _stray(inner, at_end=False):
                inner = inner[1:]
            if inner and _stray(inner, at_end=True):
                inner = inner[:-1]
        if inner == text:
            return text
        text = inner


def _wrapped(text: str) -> bool:
    """True when the first character opens a pair that the last one closes: "《狮子王》"."""
    close = _PAIRS.get(text[:1])
    if close is None or len(text) < 2 or text[-1] != close:
        return False
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == text[0]) - (ch == close)
        if depth == 0:
            return i == len(text) - 1
    return False


def _stray(text: str, *, at_end: bool) -> bool:
    """True when the mark at that end of ``text`` has no partner inside the text."""
    ch, rest = (text[-1], text[:-1]) if at_end else (text[0], text[1:])
    inward, outward = (_OPENERS_OF, _PAIRS) if at_end else (_PAIRS, _OPENERS_OF)
    if ch in _SYMMETRIC_QUOTES or ch in outward:
        return True  # a quote, or a bracket facing out of the text: "）一只狮子"
    return ch in inward and inward[ch] not in rest
