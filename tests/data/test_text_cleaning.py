"""dynacomp.data.text_cleaning: text8-style cleaning per language."""

import pytest

from dynacomp.data.text_cleaning import clean_text8


def test_clean_text8_english_follows_wikifil():
    assert clean_text8("Hello, World!  In 1990 -- the café's   end.\n") == \
        "hello world in one nine nine zero the cafe s end"
    assert clean_text8("A1b") == "a one b"
    assert clean_text8("  ") == ""


def test_clean_text8_keeps_each_alphabet():
    assert clean_text8("Hyvää päivää, Åbo! Škoda 2", "fi") == "hyvää päivää åbo skoda kaksi"
    assert clean_text8("Tiếng Việt: ĐƯỜNG 5 số", "vi") == "tiếng việt đường năm số"
    # niqqud and cantillation vanish inside words; maqaf and sof pasuq become spaces
    assert clean_text8("בְּרֵאשִׁ֖ית בָּרָ֣א עַל־פְּנֵי׃ 7 abc", "he") == "בראשית ברא על פני שבע"
    assert clean_text8("ﬁne", "en") == "fine"  # compatibility forms are normalised


def test_clean_text8_newlines_and_unknown_language():
    assert clean_text8("One.\n\n Two 2 \n", newlines=True) == "one\ntwo two"
    with pytest.raises(ValueError, match="no text8 alphabet"):
        clean_text8("x", "xx")
