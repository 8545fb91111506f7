"""Tests of the embedded demo corpus (hat.data.corpus) and its preparation (hat.data.prepare)."""

import collections
import hashlib
import importlib.util
import json
import lzma
from pathlib import Path

import pytest

from hat.data import corpus as C
from hat.data import prepare as P

CORPUS_DIR = Path(__file__).resolve().parents[1] / "data" / "corpus"


# ------------------------------------------------------------------ Ding parser

def test_ding_alternatives_pair_by_position():
    line = ("Das ist es. | Ist das so? | Tisch {m} :: "
            "That is it. | Is that so? | table")
    assert C.parse_ding_line(line) == [("Das ist es.", "That is it."), ("Ist das so?", "Is that so?")]


def test_ding_annotations_are_stripped():
    line = ("Das Kabinett trat geschlossen zurück. [pol.] {v} <Kabinet> :: "
            "The cabinet resigned en masse. [Br.] [formal]")
    assert C.parse_ding_line(line) == [("Das Kabinett trat geschlossen zurück.",
                                        "The cabinet resigned en masse.")]
    assert C.strip_annotations("Er ging {ging; gegangen} nach Hause [ugs.] .") == "Er ging nach Hause."


def test_ding_semicolon_variants():
    # more German variants than English ones: each German one pairs with the English one
    line = ("Die Musik ist voller Traurigkeit.; Die Musik ist sehr traurig. :: "
            "The music is infused with sadness.")
    assert C.parse_ding_line(line) == [
        ("Die Musik ist voller Traurigkeit.", "The music is infused with sadness."),
        ("Die Musik ist sehr traurig.", "The music is infused with sadness.")]
    # as many variants on both sides: by position
    line = "Ich war da.; Wir waren da. :: I was there.; We were there."
    assert C.parse_ding_line(line) == [("Ich war da.", "I was there."), ("Wir waren da.", "We were there.")]
    # a ';' inside an annotation is not a variant separator
    line = "Er versteckte das Geld. {versteckte; versteckt} :: He hid the money. {hid; hidden}"
    assert C.parse_ding_line(line) == [("Er versteckte das Geld.", "He hid the money.")]


def test_ding_rejects_non_sentences_and_ambiguous_lines():
    assert C.parse_ding_line("# Version :: devel 2023-01-30") == []
    assert C.parse_ding_line("") == []
    assert C.parse_ding_line("Aal {m} | Aale {pl} :: eel | eels") == []
    # different numbers of alternatives: ambiguous
    assert C.parse_ding_line("Das ist gut. | Das ist schlecht. :: That is good.") == []
    # too short, lower-case start, Ding placeholders
    assert C.parse_ding_line("Bist du? :: Are you?") == []
    assert C.parse_ding_line("die Verbreitung von etw. :: the spread of sth.") == []
    assert C.parse_ding_line("Er gibt jdm. das Buch. :: He gives sb. the book.") == []
    assert C.parse_ding_line("Wie geht es dir? :: was wondering how you are.") == []
    assert C.is_sentence("„Immer noch nicht?“, sagte sie.")
    assert C.is_sentence("I think so.")


# ---------------------------------------------------------- LibreOffice pairing

EN_PAGE = """<!DOCTYPE html><html lang="en-US"><head><title>T</title></head><body>
<div id="DisplayArea">
<h1 id="hd_id1" dir="auto">Inserting a Table</h1>
<p id="par_id10" class="paragraph">Choose <span class="menuitem">Table - Insert</span> &amp; click
   <a href="x.html">OK</a>.</p>
<p id="par_id11">Hold down <span id="swlnsys_1" class="switchinline"><span hidden="true" id="MAC_1"
 class="MAC"><span class="keycode">Command</span></span><span hidden="true" id="default_1"><span
 class="keycode">Ctrl</span></span></span> and click.</p>
<p id="par_id12">Only in English.</p>
<p id="par_id13">First copy.</p><p id="par_id13">Second copy.</p>
<div id="par_id14"><p id="par_id15">Inner text&nbsp;here.</p></div>
<p id="bm_id16">A bookmark, not a segment.</p>
<p id="par_id17"></p>
</div></body></html>"""

DE_PAGE = """<!DOCTYPE html><html lang="de"><head><title>T</title></head><body>
<div id="DisplayArea">
<h1 id="hd_id1" dir="auto">Eine Tabelle einfügen</h1>
<p id="par_id10" class="paragraph">Wählen Sie <span class="menuitem">Tabelle – Einfügen</span> &amp; klicken
   Sie <a href="x.html">OK</a>.</p>
<p id="par_id11">Halten Sie <span id="swlnsys_1" class="switchinline"><span hidden="true" id="MAC_1"
 class="MAC"><span class="keycode">Befehl</span></span><span hidden="true" id="default_1"><span
 class="keycode">Strg</span></span></span> gedrückt und klicken Sie.</p>
<p id="par_id13">Erste Kopie.</p><p id="par_id13">Zweite Kopie.</p>
<div id="par_id14"><p id="par_id15">Innerer Text hier.</p></div>
<p id="bm_id16">Ein Lesezeichen.</p>
<p id="par_id17">Nicht leer.</p>
</div></body></html>"""


def test_extract_segments():
    segs = C.extract_segments(EN_PAGE)
    assert segs["par_id10"] == "Choose Table - Insert & click OK."
    assert segs["par_id11"] == "Hold down Ctrl and click."  # MAC variant hidden, default kept
    assert segs["par_id15"] == "Inner text here."          # &nbsp; normalised
    assert "par_id13" not in segs                            # id used twice
    assert "par_id14" not in segs                            # contains another segment
    assert "bm_id16" not in segs and "DisplayArea" not in segs
    assert segs["par_id17"] == ""


def test_pair_libreoffice(tmp_path):
    for lang, page in (("en-US", EN_PAGE), ("de", DE_PAGE)):
        d = tmp_path / lang / "text" / "shared"
        d.mkdir(parents=True)
        (d / "page.html").write_text(page, encoding="utf-8")
    # a page that only exists in English gives nothing
    (tmp_path / "en-US" / "text" / "shared" / "only_en.html").write_text(
        '<p id="par_id1">Lonely English page here.</p>', encoding="utf-8")
    out = C.pair_libreoffice(tmp_path, langs=("en", "de"), pairs=(("de", "en"),))
    assert out == {("de", "en"): [
        ("Eine Tabelle einfügen", "Inserting a Table"),
        ("Wählen Sie Tabelle – Einfügen & klicken Sie OK.", "Choose Table - Insert & click OK."),
        ("Halten Sie Strg gedrückt und klicken Sie.", "Hold down Ctrl and click."),
        ("Innerer Text hier.", "Inner text here."),
    ]}


def test_pair_libreoffice_missing_language_dir(tmp_path):
    (tmp_path / "en-US" / "text").mkdir(parents=True)
    with pytest.raises(C.CorpusError, match="missing"):
        C.pair_libreoffice(tmp_path, langs=("en", "fr"), pairs=(("en", "fr"),))


# ------------------------------------------------------------------- cleaning

@pytest.mark.parametrize("src,tgt,reason", [
    ("Das ist ein Test.", "This is a test.", None),
    ("", "This is a test.", "empty"),
    ("Das ist ein Test.", "   ", "empty"),
    ("Version 7.4 Release Notes", "version 7.4 release notes", "identical"),
    ("Wählen Sie Datei/Öffnen aus.", "Choose File/Open here.", "slash_or_paren"),
    ("Das ist (fast) ein Test.", "This is almost a test.", "slash_or_paren"),
    ("Das ist ein Test.", "This is (almost) a test.", "slash_or_paren"),
    ("Zwei Wörter", "Two words here", "length"),
    ("Das ist ein Test.", " ".join(["word"] * 51), "length"),
    ("Eins zwei drei.", "One two three four five six seven eight.", "ratio"),
    ("Eins zwei drei vier.", "One two three four five six seven eight nine ten.", None),  # ratio 2.5
])
def test_reject_reason(src, tgt, reason):
    assert C.reject_reason(src, tgt) == reason


def test_clean_pairs_dedup():
    triples = [
        ("Das ist ein Test.", "This is a test.", "ding"),
        ("Das  ist ein Test.", "This is a test.", "libreoffice"),   # same after whitespace normalisation
        ("Das ist ein Test.", "That is a test.", "ding"),           # same source, other target
        ("Das ist kein Test.", "This is a test.", "ding"),          # other source, same target: kept
        ("Zu kurz.", "Too short.", "ding"),
    ]
    kept, reasons = C.clean_pairs(triples)
    assert kept == [("Das ist ein Test.", "This is a test.", "ding"),
                    ("Das ist kein Test.", "This is a test.", "ding")]
    assert reasons == collections.Counter({"duplicate": 1, "duplicate_source": 1, "length": 1})


# --------------------------------------------------------------------- splits

def test_split_of_is_md5_mod_20():
    keys = [f"Satz Nummer {i}." for i in range(4000)]
    for k in keys[:200]:
        r = int(hashlib.md5(k.encode("utf-8")).hexdigest(), 16) % 20
        assert C.split_of(k) == {0: "test", 1: "valid"}.get(r, "train")
    counts = collections.Counter(C.split_of(k) for k in keys)
    assert 120 < counts["test"] < 280 and 120 < counts["valid"] < 280
    assert [C.split_of(k) for k in keys] == [C.split_of(k) for k in keys]


def test_assign_splits_keeps_targets_out_of_test():
    # find two sources that fall into test and train: sharing one target, both go to train
    src_test = next(f"Quelle {i}." for i in range(10000) if C.split_of(f"Quelle {i}.") == "test")
    src_train = next(f"Quelle {i}." for i in range(10000) if C.split_of(f"Quelle {i}.") == "train")
    src_valid = next(f"Quelle {i}." for i in range(10000) if C.split_of(f"Quelle {i}.") == "valid")
    rows, moved = C.assign_splits([(src_test, "Same target.", "ding"),
                                   (src_train, "Same target.", "ding"),
                                   (src_valid, "Other target.", "libreoffice")])
    assert moved == 1
    assert rows == [*(("train", s, "Same target.", "ding") for s in sorted([src_test, src_train])),
                    ("valid", src_valid, "Other target.", "libreoffice")]


def test_tsv_xz_is_deterministic():
    rows = [("train", "Ein Satz hier.", "A sentence here.", "ding")]
    a = C.xz_bytes(C.tsv_bytes("de-en", rows))
    assert a == C.xz_bytes(C.tsv_bytes("de-en", rows))
    assert lzma.decompress(a).decode() == "split\tde\ten\torigin\ntrain\tEin Satz hier.\tA sentence here.\tding\n"


# ----------------------------------------------------------- committed corpus

@pytest.fixture(scope="module")
def manifest():
    return json.loads((CORPUS_DIR / "MANIFEST.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("pair,min_train,min_eval", [("de-en", 30000, 1500), ("en-fr", 15000, 800)])
def test_committed_corpus(pair, min_train, min_eval, manifest):
    path = CORPUS_DIR / f"{pair}.tsv.xz"
    data = lzma.decompress(path.read_bytes())
    m = manifest["pairs"][pair]
    assert hashlib.sha256(data).hexdigest() == m["sha256_tsv"]
    src_lang, tgt_lang = pair.split("-")
    assert data.split(b"\n", 1)[0].decode() == f"split\t{src_lang}\t{tgt_lang}\torigin"

    splits = C.load_corpus(CORPUS_DIR, pair)
    assert set(splits) == {"train", "valid", "test"}
    assert len(splits["train"]) > min_train
    assert len(splits["valid"]) > min_eval and len(splits["test"]) > min_eval
    for sp, rows in splits.items():
        assert len(rows) == m["splits"][sp]["total"]

    # the committed file is exactly what the writer would produce from its rows
    rows = [(sp, s, t, o) for sp in C.SPLITS for s, t, o in splits[sp]]
    assert C.tsv_bytes(pair, rows) == data

    origins = collections.Counter(o for _, _, _, o in rows)
    assert set(origins) <= set(C.ORIGINS)
    if pair == "de-en":
        assert origins["ding"] > 10000 and origins["libreoffice"] > 10000
    for sp, s, t, o in rows:
        assert C.reject_reason(s, t) is None
        assert sp == "train" or C.split_of(s) == sp
    # one source, one target; nothing of train in test, on either side
    assert len({s for _, s, _, _ in rows}) == len(rows)
    for side in (0, 1):
        train = {r[side] for r in splits["train"]}
        for ev in ("valid", "test"):
            assert not train & {r[side] for r in splits[ev]}


def test_load_corpus_reversed_and_errors(tmp_path):
    fwd = C.load_corpus(CORPUS_DIR, "de-en")
    rev = C.load_corpus(CORPUS_DIR, "en-de")
    assert [(t, s, o) for s, t, o in fwd["test"]] == rev["test"]
    with pytest.raises(C.CorpusError, match="unknown language pair"):
        C.load_corpus(CORPUS_DIR, "de-fr")
    with pytest.raises(C.CorpusError, match="not found"):
        C.load_corpus(tmp_path, "de-en")


def test_licenses_and_readme_present(manifest):
    lic = CORPUS_DIR / "LICENSES"
    assert "GPL-2+" in (lic / "trans-de-en.copyright").read_text()
    assert "MPL-2.0" in (lic / "libreoffice-help.copyright").read_text()
    assert (lic / "GPL-2").is_file() and (lic / "MPL-2.0").is_file()
    for name in C.PACKAGES:
        assert manifest["packages"][name] not in ("", "unknown", "?")
    assert (CORPUS_DIR / "README.md").read_text() == C.render_readme(manifest)


# -------------------------------------------------------------------- prepare

def test_prepare_errors(tmp_path):
    with pytest.raises(P.PrepareError, match="unknown language pair"):
        P.prepare("xx-en", tmp_path / "out", CORPUS_DIR)
    with pytest.raises(P.PrepareError, match="corpus file not found"):
        P.prepare("de-en", tmp_path / "out", tmp_path / "nowhere")
    with pytest.raises(P.PrepareError, match="bad language pair"):
        P.prepare("deen", tmp_path / "out", CORPUS_DIR)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("x")
    with pytest.raises(P.PrepareError, match="not a prepared data directory"):
        P.prepare("de-en", tmp_path / "busy", CORPUS_DIR)
    assert (tmp_path / "busy" / "precious.txt").read_text() == "x"
    assert P.main(["--pair", "xx-en", "--dest", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_prepare_de_en_small_vocab(tmp_path, capsys):
    for mod in ("fairseq_cli", "sentencepiece"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not importable in this environment (needs the project venv)")
    dest = P.prepare("de-en", tmp_path / "demo.de-en", CORPUS_DIR, vocab_size=1000, workers=2)
    assert dest == (tmp_path / "demo.de-en").absolute()
    for name in ("dict.de.txt", "dict.en.txt", "spm.model", "raw/test.en", "raw/valid.de", ".done",
                 *(f"{sp}.de-en.{lang}.{ext}" for sp in C.SPLITS for lang in ("de", "en")
                   for ext in ("bin", "idx"))):
        assert (dest / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    done = json.loads((dest / ".done").read_text())
    corpus = C.load_corpus(CORPUS_DIR, "de-en")
    assert done["sentences"] == {sp: len(corpus[sp]) for sp in C.SPLITS}
    assert done["spm_vocab"] == 1000

    refs = (dest / "raw" / "test.en").read_text(encoding="utf-8").splitlines()
    assert refs == [t for _, t, _ in corpus["test"]]
    pieces = (dest / "tok" / "test.en").read_text(encoding="utf-8").splitlines()
    assert pieces[0] != refs[0] and "▁" in pieces[0]
    assert P.detokenize(pieces[0], dest / "spm.model") == refs[0]
    assert P.detokenize(pieces[:50], str(dest / "spm.model")) == refs[:50]
    assert P.encode(refs[0], dest / "spm.model") == pieces[0]

    # same parameters: nothing rebuilt
    mtime = (dest / "train.de-en.de.bin").stat().st_mtime_ns
    capsys.readouterr()
    assert P.prepare("de-en", dest, CORPUS_DIR, vocab_size=1000, workers=2) == dest
    assert "up to date" in capsys.readouterr().out
    assert (dest / "train.de-en.de.bin").stat().st_mtime_ns == mtime
