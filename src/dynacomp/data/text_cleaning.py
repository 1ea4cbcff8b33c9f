"""text8-style cleaning: lowercase letters of a language's alphabet and single spaces."""

from __future__ import annotations

import functools
import unicodedata

_LATIN = "abcdefghijklmnopqrstuvwxyz"
_VIETNAMESE = _LATIN + "đ" + "".join(
    unicodedata.normalize("NFC", vowel + tone)
    for vowel in "aăâeêioôơuưy" for tone in ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"))
ALPHABETS = {
    "en": _LATIN,
    "fi": _LATIN + "åäö",
    "vi": _VIETNAMESE,
    "he": "".join(map(chr, range(0x05D0, 0x05EB))),  # alef..tav with final forms, no points
}
DIGIT_WORDS = {
    "en": "zero one two three four five six seven eight nine".split(),
    "fi": "nolla yksi kaksi kolme neljä viisi kuusi seitsemän kahdeksan yhdeksän".split(),
    "vi": "không một hai ba bốn năm sáu bảy tám chín".split(),
    "he": "אפס אחת שתיים שלוש ארבע חמש שש שבע שמונה תשע".split(),
}


class _Text8Table(dict):
    """A ``str.translate`` table filled on first sight of each character: letters of the alphabet
    stay, digits become words, accents not in the alphabet fall off (é -> e), combining marks such
    as niqqud vanish, and everything else becomes a space."""

    def __init__(self, language: str, newlines: bool) -> None:
        super().__init__()
        self.alphabet = frozenset(ALPHABETS[language])
        self.digits = DIGIT_WORDS[language]
        self.newlines = newlines

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if char in self.alphabet:
            value = char
        elif "0" <= char <= "9":
            value = f" {self.digits[int(char)]} "
        elif char == "\n" and self.newlines:
            value = "\n"
        elif unicodedata.category(char) == "Mn":
            value = ""
        else:
            value = "".join(c for c in unicodedata.normalize("NFD", char) if c in self.alphabet) or " "
        self[code] = value
        return value


@functools.cache
def _text8_table(language: str, newlines: bool) -> _Text8Table:
    if language not in ALPHABETS:
        raise ValueError(f"no text8 alphabet for {language!r}; known: {', '.join(ALPHABETS)}")
    return _Text8Table(language, newlines)


def clean_text8(text: str, language: str = "en", *, newlines: bool = False) -> str:
    """text8-style text: lowercase letters of the language's alphabet and single spaces.

    As Mahoney's wikifil.pl does for English, digits are spelled out one by one ("1990" -> "one
    nine nine zero"); other languages get their own digit words. Hebrew keeps its 27 letter forms
    without niqqud, Finnish adds å ä ö, Vietnamese keeps its letters with diacritics; other
    accented letters lose the accent. ``newlines=True`` keeps line breaks (as DTP's wiki40b
    cleaning does), dropping empty lines.
    """
    table = _text8_table(language, newlines)
    text = unicodedata.normalize("NFKC", text).lower().translate(table)
    if newlines:
        lines = (" ".join(line.split()) for line in text.split("\n"))
        return "\n".join(line for line in lines if line)
    return " ".join(text.split())
