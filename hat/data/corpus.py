"""Build the embedded demo corpus (De-En and En-Fr) from Debian packages.

Sources (both free licences, both in Debian main):

* ``trans-de-en`` -- the Ding German-English dictionary (GPL-2+).  Its example
  sentences (entries ending in ``.``, ``!`` or ``?``) give De-En pairs.
* ``libreoffice-help-en-us`` / ``-de`` / ``-fr`` -- the LibreOffice help pages
  (MPL-2.0).  The same element id in the same page in two languages is one pair.

Usage::

    python -m hat.data.corpus --out data/corpus [--workdir DIR] [--extracted DIR]

Without ``--extracted`` the packages are fetched with ``apt-get download`` into
``--workdir`` (a temporary directory by default; ``.deb`` files already there are
reused) and unpacked with ``dpkg-deb -x``.  ``--extracted DIR`` points at a
directory into which the four packages were already unpacked.

Output, byte-deterministic (sorted rows, fixed xz preset, no timestamps):

* ``<out>/de-en.tsv.xz`` (columns ``split de en origin``) and ``<out>/en-fr.tsv.xz``
  (``split en fr origin``), ``origin`` being ``ding`` or ``libreoffice``;
* ``<out>/MANIFEST.json`` (package versions, counts, checksums);
* ``<out>/README.md`` and ``<out>/LICENSES/`` (copyright files and licence texts).

Read it back with :func:`load_corpus`.  Only the standard library is used.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import html.parser
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from hat.config import stage_parser
from hat.errors import HatError
from hat.io import write_bytes

PACKAGES = ("trans-de-en", "libreoffice-help-en-us", "libreoffice-help-de", "libreoffice-help-fr")
DING_FILE = "usr/share/trans/de-en"
LO_HELP_DIR = "usr/share/libreoffice/help"
LO_LANG_DIRS = {"en": "en-US", "de": "de", "fr": "fr"}
PAIRS = {"de-en": ("de", "en"), "en-fr": ("en", "fr")}
SPLITS = ("train", "valid", "test")
ORIGINS = ("ding", "libreoffice")
LICENSE_TEXTS = ("GPL-2", "MPL-2.0", "Apache-2.0")
COMMON_LICENSES = "usr/share/common-licenses"

MIN_WORDS = 3
MAX_WORDS = 50
MAX_RATIO = 2.5
XZ_PRESET = 9 | lzma.PRESET_EXTREME

Pair = Tuple[str, str]
Row = Tuple[str, str, str, str]  # split, src, tgt, origin


class CorpusError(HatError):
    """A problem worth one line on stderr (missing file, missing tool, bad format)."""


def normalize_space(text: str) -> str:
    """Collapse all (unicode) whitespace runs to one space and strip the ends."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- Ding

_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:…])")
_SENTENCE_END = re.compile(r"[.!?][\"'“”‘’«»]*$")


def strip_annotations(text: str) -> str:
    """Remove Ding annotations: ``{f}``/``{vt}`` (grammar), ``[ugs.]`` (usage),
    ``<Aalmolch>`` (alternative spellings, search keys); tidy the spaces left."""
    prev = None
    while prev != text:  # nested brackets: strip innermost first
        prev, text = text, _ANNOTATION.sub(" ", text)
    text = normalize_space(text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


# Ding's placeholders ("etw. tun", "to do sth.") mark templates, not sentences.
_PLACEHOLDER = re.compile(r"(?<![\w.])(etw|jd|jdm|jdn|jds|sth|sb)\.|(?<!\w)(sb|sth)'s\b")


def is_sentence(text: str) -> bool:
    """A full sentence: ends in . ! or ? (closing quotes allowed), has >= 3 words,
    does not start in lower case, and has no Ding placeholder (etw., jdm., sth., sb., ...)."""
    return (bool(_SENTENCE_END.search(text)) and len(text.split()) >= 3
            and not text[0].islower() and not _PLACEHOLDER.search(text))


def _variants(side: str) -> List[str]:
    return [v for v in (normalize_space(x) for x in side.split(";")) if v]


def parse_ding_line(line: str) -> List[Pair]:
    """Sentence pairs (de, en) from one line of the Ding dictionary.

    A line is ``de :: en``; each side holds alternatives separated by `` | ``
    (the i-th German alternative translates the i-th English one); an
    alternative holds variants separated by ``;`` which are synonyms of each
    other.  Annotations in ``{}``, ``[]`` and ``<>`` are removed first (they may
    themselves contain ``;``).  Variants are paired position by position when
    both sides have as many; otherwise every German variant is paired with the
    first English one (all variants of one alternative translate each other,
    so the pair is right either way).  Only pairs where both sides are full
    sentences (:func:`is_sentence`) are returned.  Lines whose sides have
    different numbers of alternatives are ambiguous and give nothing.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    sides = line.split(" :: ")
    if len(sides) != 2:
        return []
    de_alts, en_alts = sides[0].split(" | "), sides[1].split(" | ")
    if len(de_alts) != len(en_alts):
        return []
    out: List[Pair] = []
    for de_alt, en_alt in zip(de_alts, en_alts):
        dv = _variants(strip_annotations(de_alt))
        ev = _variants(strip_annotations(en_alt))
        if not dv or not ev:
            continue
        pairs = list(zip(dv, ev)) if len(dv) == len(ev) else [(d, ev[0]) for d in dv]
        out.extend((d, e) for d, e in pairs if is_sentence(d) and is_sentence(e))
    return out


def read_ding(path: Path) -> List[Pair]:
    """All sentence pairs of a Ding dictionary file, in file order."""
    pairs: List[Pair] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            pairs.extend(parse_ding_line(line))
    return pairs


# -------------------------------------------------------------------- LibreOffice

_SEGMENT_ID = re.compile(r"^(par_id|hd_id|N\d)")
_VOID_TAGS = frozenset(
    "area base br col embed hr img input link meta param source track wbr".split())


class _SegmentParser(html.parser.HTMLParser):
    """Collects the text of elements whose id is a help-segment id.

    Text inside ``hidden`` elements (the per-application / per-OS variants of a
    switch) is left out, except for the ``default…`` variant, which is what the
    help shows on a generic system.  An element containing another segment is
    dropped (its text would duplicate the inner one), and so is an id seen twice.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: List[Tuple[str, Optional[str], bool]] = []  # tag, segment id, hidden
        self.open: Dict[str, List[str]] = {}
        self.nested: set = set()
        self.seen: collections.Counter = collections.Counter()
        self.segments: Dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        if tag in _VOID_TAGS:
            if tag == "br":
                self.handle_data(" ")
            return
        a = dict(attrs)
        el_id = a.get("id") or ""
        hidden = self.stack[-1][2] if self.stack else False
        if "hidden" in a and not el_id.startswith("default"):
            hidden = True
        seg = el_id if _SEGMENT_ID.match(el_id) else None
        if seg is not None:
            self.seen[seg] += 1
            self.nested.update(self.open)
            self.open[seg] = []
        self.stack.append((tag, seg, hidden))

    def handle_startendtag(self, tag, attrs):
        if tag == "br":
            self.handle_data(" ")

    def handle_endtag(self, tag):
        if tag in _VOID_TAGS:
            return
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k][0] == tag:
                break
        else:
            return  # stray end tag
        while len(self.stack) > k:
            _, seg, _ = self.stack.pop()
            if seg is not None and seg in self.open:
                text = "".join(self.open.pop(seg))
                if seg not in self.nested:
                    self.segments[seg] = text

    def handle_data(self, data):
        if self.open and not (self.stack and self.stack[-1][2]):
            for parts in self.open.values():
                parts.append(data)

    def result(self) -> Dict[str, str]:
        return {k: normalize_space(v) for k, v in self.segments.items()
                if self.seen[k] == 1 and k not in self.nested}


def extract_segments(html_text: str) -> Dict[str, str]:
    """``{element id: plain text}`` for the translatable segments of one help page:
    tags stripped, entities unescaped, whitespace normalised."""
    p = _SegmentParser()
    p.feed(html_text)
    p.close()
    return p.result()


def _read_segments(path: Path) -> Dict[str, str]:
    return extract_segments(path.read_text(encoding="utf-8", errors="replace"))


def pair_libreoffice(help_dir: Path, langs: Sequence[str] = ("en", "de", "fr"),
                     pairs: Sequence[Tuple[str, str]] = (("de", "en"), ("en", "fr")),
                     ) -> Dict[Tuple[str, str], List[Pair]]:
    """Pair help segments across languages: same page path + same element id.

    ``help_dir`` holds one directory per language (``en-US``, ``de``, ``fr``).
    Returns ``{(src, tgt): [(src_text, tgt_text), ...]}`` with non-empty sides,
    in a deterministic order (pages sorted, ids sorted).
    """
    help_dir = Path(help_dir)
    lang_dirs = {lang: help_dir / LO_LANG_DIRS[lang] for lang in langs}
    for lang, d in lang_dirs.items():
        if not d.is_dir():
            raise CorpusError(f"LibreOffice help directory missing: {d}")
    base = lang_dirs[langs[0]]
    pages = sorted(p.relative_to(base).as_posix() for p in (base / "text").rglob("*.html"))
    out: Dict[Tuple[str, str], List[Pair]] = {pr: [] for pr in pairs}
    for rel in pages:
        segs = {}
        for lang, d in lang_dirs.items():
            f = d / rel
            segs[lang] = _read_segments(f) if f.is_file() else {}
        for src, tgt in pairs:
            s, t = segs[src], segs[tgt]
            for seg_id in sorted(s.keys() & t.keys()):
                if s[seg_id] and t[seg_id]:
                    out[(src, tgt)].append((s[seg_id], t[seg_id]))
    return out


# ---------------------------------------------------------------------- cleaning

def reject_reason(src: str, tgt: str) -> Optional[str]:
    """Why a pair fails the cleaning rules, or None if it passes.

    Rules: both sides non-empty; sides not identical (case-insensitive); no
    ``/`` or ``(`` on either side (alternatives and parenthesised remarks that
    have no counterpart); 3..50 words per side; word-count ratio <= 2.5.
    """
    if not src.strip() or not tgt.strip():
        return "empty"
    if src.casefold() == tgt.casefold():
        return "identical"
    if "/" in src or "/" in tgt or "(" in src or "(" in tgt:
        return "slash_or_paren"
    ns, nt = len(src.split()), len(tgt.split())
    if not (MIN_WORDS <= ns <= MAX_WORDS and MIN_WORDS <= nt <= MAX_WORDS):
        return "length"
    if max(ns, nt) / min(ns, nt) > MAX_RATIO:
        return "ratio"
    return None


def clean_pairs(pairs: Iterable[Tuple[str, str, str]]
                ) -> Tuple[List[Tuple[str, str, str]], collections.Counter]:
    """Apply :func:`reject_reason` and de-duplicate ``(src, tgt, origin)`` triples.

    Exact duplicate pairs are dropped, then any later pair whose source was
    already kept (one source, one target).  Input order decides which pair is
    kept, so pass a deterministic order.  Returns kept triples and a counter of
    the reasons for the dropped ones.
    """
    kept: List[Tuple[str, str, str]] = []
    reasons: collections.Counter = collections.Counter()
    seen_pairs: set = set()
    seen_src: set = set()
    for src, tgt, origin in pairs:
        src, tgt = normalize_space(src), normalize_space(tgt)
        why = reject_reason(src, tgt)
        if why is None and (src, tgt) in seen_pairs:
            why = "duplicate"
        if why is None and src in seen_src:
            why = "duplicate_source"
        if why is not None:
            reasons[why] += 1
            continue
        seen_pairs.add((src, tgt))
        seen_src.add(src)
        kept.append((src, tgt, origin))
    return kept, reasons


# ------------------------------------------------------------------------ splits

def split_of(key: str) -> str:
    """Deterministic split from the md5 of ``key``: %20 == 0 test, == 1 valid, else train."""
    r = int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % 20
    return "test" if r == 0 else "valid" if r == 1 else "train"


def assign_splits(pairs: Sequence[Tuple[str, str, str]]) -> Tuple[List[Row], int]:
    """Give each ``(src, tgt, origin)`` its split by the md5 of its source side.

    Sources are unique after :func:`clean_pairs`, but one target may have several
    sources (synonymous German variants of one English sentence).  When such a
    target falls into more than one split, all its pairs go to train, so that no
    valid/test reference is also a training target.  Returns the rows, sorted
    (split, origin, src, tgt), and how many pairs were moved to train.
    """
    splits = [split_of(src) for src, _, _ in pairs]
    tgt_splits: Dict[str, set] = collections.defaultdict(set)
    for (_, tgt, _), sp in zip(pairs, splits):
        tgt_splits[tgt].add(sp)
    rows: List[Row] = []
    moved = 0
    for (src, tgt, origin), sp in zip(pairs, splits):
        if len(tgt_splits[tgt]) > 1 and sp != "train":
            sp, moved = "train", moved + 1
        rows.append((sp, src, tgt, origin))
    rows.sort(key=lambda r: (SPLITS.index(r[0]), ORIGINS.index(r[3]), r[1], r[2]))
    return rows, moved


# ------------------------------------------------------------------------ files

def _write_if_changed(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() == data:
        return
    write_bytes(str(path), data)


def tsv_bytes(pair: str, rows: Sequence[Row]) -> bytes:
    src, tgt = PAIRS[pair]
    lines = ["\t".join(("split", src, tgt, "origin"))]
    for row in rows:
        if any("\t" in c or "\n" in c for c in row):
            raise CorpusError(f"tab or newline in a corpus field: {row!r}")
        lines.append("\t".join(row))
    return ("\n".join(lines) + "\n").encode("utf-8")


def xz_bytes(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)


def corpus_file(corpus_dir: Path, pair: str) -> Tuple[Path, bool]:
    """The file holding ``pair`` (either direction) and whether it is reversed."""
    a, _, b = pair.partition("-")
    for name, rev in ((f"{a}-{b}", False), (f"{b}-{a}", True)):
        if name in PAIRS:
            return Path(corpus_dir) / f"{name}.tsv.xz", rev
    known = ", ".join(sorted(set(PAIRS) | {f"{b}-{a}" for a, b in PAIRS.values()}))
    raise CorpusError(f"unknown language pair {pair!r} (known: {known})")


def load_corpus(corpus_dir, pair: str) -> Dict[str, List[Tuple[str, str, str]]]:
    """Read the embedded corpus: ``{split: [(src, tgt, origin), ...]}``.

    ``pair`` is ``src-tgt``; ``en-de`` and ``fr-en`` read the same files as
    ``de-en`` / ``en-fr`` with the columns swapped.
    """
    path, rev = corpus_file(Path(corpus_dir), pair)
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    out: Dict[str, List[Tuple[str, str, str]]] = {s: [] for s in SPLITS}
    with lzma.open(path, "rt", encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n").split("\t")
        want = ["split", *PAIRS[path.name[:-len(".tsv.xz")]], "origin"]
        if header != want:
            raise CorpusError(f"{path}: bad header {header!r}, expected {want!r}")
        for n, line in enumerate(f, 2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 4 or cols[0] not in out:
                raise CorpusError(f"{path}:{n}: malformed row")
            sp, s, t, origin = cols
            out[sp].append((t, s, origin) if rev else (s, t, origin))
    return out


# ------------------------------------------------------------------- packages

def _run(cmd: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def fetch_packages(workdir: Path) -> Tuple[Path, Dict[str, str]]:
    """Download (``apt-get download``, after one ``apt-get update`` if needed) and
    unpack the source packages into ``workdir``; returns (root, versions)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise CorpusError(f"{tool} not found: this needs a Debian/Ubuntu system "
                              f"(or pass --extracted DIR with {', '.join(PACKAGES)} unpacked)")
    workdir.mkdir(parents=True, exist_ok=True)

    def debs() -> Dict[str, Optional[str]]:
        found = {}
        for name in PACKAGES:
            hits = sorted(glob.glob(str(workdir / f"{name}_*.deb")))
            found[name] = hits[-1] if hits else None
        return found

    missing = [n for n, f in debs().items() if f is None]
    if missing:
        r = _run(["apt-get", "download", *missing], workdir)
        if r.returncode != 0:
            print("apt-get download failed; running apt-get update once", file=sys.stderr)
            u = _run(["apt-get", "update"], workdir)
            if u.returncode != 0:
                raise CorpusError(f"apt-get update failed: {_last_line(u.stdout)}")
            r = _run(["apt-get", "download", *missing], workdir)
            if r.returncode != 0:
                raise CorpusError(f"apt-get download {' '.join(missing)} failed: {_last_line(r.stdout)}")
    root = workdir / "root"
    versions = {}
    for name, deb in debs().items():
        if deb is None:
            raise CorpusError(f"package {name} was not downloaded")
        r = _run(["dpkg-deb", "-f", deb, "Version"], workdir)
        if r.returncode != 0:
            raise CorpusError(f"dpkg-deb -f {deb} failed: {_last_line(r.stdout)}")
        versions[name] = r.stdout.strip()
        r = _run(["dpkg-deb", "-x", deb, str(root)], workdir)
        if r.returncode != 0:
            raise CorpusError(f"dpkg-deb -x {deb} failed: {_last_line(r.stdout)}")
    (root / "VERSIONS.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    return root, versions


def read_versions(root: Path) -> Dict[str, str]:
    f = root / "VERSIONS.json"
    if f.is_file():
        return json.loads(f.read_text())
    return {name: "unknown" for name in PACKAGES}


# ---------------------------------------------------------------------- build

def collect(root: Path) -> Dict[str, List[Tuple[str, str, str]]]:
    """Raw (uncleaned) ``(src, tgt, origin)`` triples per pair, deterministic order."""
    ding_path = root / DING_FILE
    if not ding_path.is_file():
        raise CorpusError(f"Ding dictionary not found: {ding_path} (is trans-de-en unpacked there?)")
    ding = sorted(set(read_ding(ding_path)))
    lo = pair_libreoffice(root / LO_HELP_DIR)
    return {
        "de-en": [(d, e, "ding") for d, e in ding]
                 + [(d, e, "libreoffice") for d, e in sorted(set(lo[("de", "en")]))],
        "en-fr": [(e, f, "libreoffice") for e, f in sorted(set(lo[("en", "fr")]))],
    }


def _licenses(root: Path, out: Path) -> List[str]:
    lic = out / "LICENSES"
    written = []
    ding_cr = root / "usr/share/doc/trans-de-en/copyright"
    if not ding_cr.is_file():
        raise CorpusError(f"copyright file missing: {ding_cr}")
    _write_if_changed(lic / "trans-de-en.copyright", ding_cr.read_bytes())
    written.append("trans-de-en.copyright")
    lo = {}
    for name in PACKAGES[1:]:
        f = root / f"usr/share/doc/{name}/copyright"
        if not f.is_file():
            raise CorpusError(f"copyright file missing: {f}")
        lo[name] = f.read_bytes()
    if len(set(lo.values())) == 1:
        _write_if_changed(lic / "libreoffice-help.copyright", next(iter(lo.values())))
        written.append("libreoffice-help.copyright")
    else:
        for name, data in sorted(lo.items()):
            _write_if_changed(lic / f"{name}.copyright", data)
            written.append(f"{name}.copyright")
    for name in LICENSE_TEXTS:
        for base in (root / COMMON_LICENSES, Path("/") / COMMON_LICENSES):
            if (base / name).is_file():
                _write_if_changed(lic / name, (base / name).read_bytes())
                written.append(name)
                break
        else:
            print(f"warning: full text of {name} not found in {COMMON_LICENSES}", file=sys.stderr)
    return written


def build(root: Path, out: Path, versions: Optional[Dict[str, str]] = None) -> dict:
    """Build every output file under ``out`` from the unpacked packages in ``root``."""
    root, out = Path(root), Path(out)
    versions = versions or read_versions(root)
    raw = collect(root)
    manifest: dict = {"packages": versions, "pairs": {}}
    for pair, triples in raw.items():
        raw_counts = collections.Counter(o for _, _, o in triples)
        kept, reasons = clean_pairs(triples)
        rows, moved = assign_splits(kept)
        data = tsv_bytes(pair, rows)
        xz = xz_bytes(data)
        name = f"{pair}.tsv.xz"
        _write_if_changed(out / name, xz)
        counts = {sp: {o: 0 for o in ORIGINS} for sp in SPLITS}
        for sp, _, _, o in rows:
            counts[sp][o] += 1
        for sp in SPLITS:
            counts[sp]["total"] = sum(counts[sp][o] for o in ORIGINS)
        manifest["pairs"][pair] = {
            "file": name,
            "columns": ["split", *PAIRS[pair], "origin"],
            "raw": {o: raw_counts.get(o, 0) for o in ORIGINS},
            "kept": {o: sum(counts[sp][o] for sp in SPLITS) for o in ORIGINS},
            "dropped": dict(sorted(reasons.items())),
            "moved_to_train": moved,
            "splits": counts,
            "bytes_xz": len(xz),
            "sha256_tsv": hashlib.sha256(data).hexdigest(),
        }
    manifest["license_files"] = _licenses(root, out)
    _write_if_changed(out / "MANIFEST.json",
                      (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
                      .encode("utf-8"))
    _write_if_changed(out / "README.md", render_readme(manifest).encode("utf-8"))
    return manifest


def render_readme(m: dict) -> str:
    v = m["packages"]
    lines = [
        "# Embedded demo corpus (De-En, En-Fr)",
        "",
        "Generated by `python -m hat.data.corpus --out data/corpus`; do not edit by hand",
        "(re-running the command on the same package versions gives byte-identical files).",
        "",
        "## Sources",
        "",
        "| origin | Debian package | version | licence | what is used |",
        "| --- | --- | --- | --- | --- |",
        f"| ding | trans-de-en | {v.get('trans-de-en', '?')} | GPL-2+ | `{DING_FILE}`: example sentences of the "
        "Ding German-English dictionary (Frank Richter, TU Chemnitz) |",
    ]
    for name in PACKAGES[1:]:
        lines.append(f"| libreoffice | {name} | {v.get(name, '?')} | MPL-2.0 | "
                     f"`{LO_HELP_DIR}/<lang>/text/**/*.html`: LibreOffice help pages |")
    lines += [
        "",
        "Copyright notices and licence texts are in `LICENSES/`: the Debian `copyright` files of "
        "the packages and the full texts of " + ", ".join(LICENSE_TEXTS) + " (the LibreOffice "
        "copyright file mentions Apache-2.0 material). The corpus files are derived works: "
        "the Ding-derived rows (origin `ding`) are under GPL-2+, the LibreOffice-derived rows "
        "(origin `libreoffice`) under MPL-2.0.",
        "",
        "## Format",
        "",
        "One xz-compressed UTF-8 TSV per language pair, with a header line:",
        "`de-en.tsv.xz` (`split de en origin`) and `en-fr.tsv.xz` (`split en fr origin`).",
        "Rows are sorted by split (train, valid, test), origin, source, target. Read them with",
        "`hat.data.corpus.load_corpus(dir, pair)`.",
        "",
        "## Extraction",
        "",
        "* Ding: each line is `de :: en`, alternatives separated by ` | ` pair up by position; "
        "annotations `{…}`, `[…]`, `<…>` are removed; `;`-separated variants (synonyms) pair by "
        "position when both sides have as many, else every German variant pairs with the first "
        "English one. Kept: pairs where both sides end in `.`, `!` or `?`, have at least 3 words, "
        "do not start in lower case and hold no placeholder (`etw.`, `jdm.`, `sth.`, `sb.`, …).",
        "* LibreOffice: same page path and same element id (`par_id…`, `hd_id…`, `N…`) in two "
        "languages form a pair; tags stripped, entities unescaped, whitespace normalised; hidden "
        "per-application/per-OS variants dropped except the `default` one; ids used twice in a "
        "page, and elements containing another segment, are skipped.",
        "",
        "## Cleaning",
        "",
        f"* {MIN_WORDS}–{MAX_WORDS} words per side, word-count ratio ≤ {MAX_RATIO};",
        "* pairs containing `/` or `(` on either side are dropped, as are pairs with an empty side "
        "or identical sides (case-insensitive);",
        "* exact duplicate pairs are dropped, then later pairs whose source side was already kept "
        "(one source, one target); Ding pairs come first, so they win over LibreOffice ones.",
        "",
        "## Splits",
        "",
        "Split by the md5 of the source side (German for De-En, English for En-Fr): "
        "`int(md5, 16) % 20 == 0` → test, `== 1` → valid, else train. A target sentence that "
        "would fall into more than one split (it has several synonymous sources) goes to train "
        "with all its pairs, so no valid/test reference is also a training target.",
        "",
        "## Counts",
        "",
    ]
    for pair, p in m["pairs"].items():
        lines += [
            f"### {pair} (`{p['file']}`, {p['bytes_xz']:,} bytes)",
            "",
            f"Distinct raw pairs: " + ", ".join(f"{o} {p['raw'][o]:,}" for o in ORIGINS)
            + "; dropped: " + ", ".join(f"{k} {n:,}" for k, n in p["dropped"].items())
            + f"; moved to train: {p['moved_to_train']}.",
            "",
            "| split | " + " | ".join(ORIGINS) + " | total |",
            "| --- | " + " | ".join("---:" for _ in ORIGINS) + " | ---: |",
        ]
        for sp in SPLITS:
            c = p["splits"][sp]
            lines.append(f"| {sp} | " + " | ".join(f"{c[o]:,}" for o in ORIGINS)
                         + f" | {c['total']:,} |")
        tot = {o: sum(p["splits"][sp][o] for sp in SPLITS) for o in ORIGINS}
        lines.append("| all | " + " | ".join(f"{tot[o]:,}" for o in ORIGINS)
                     + f" | {sum(tot.values()):,} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = stage_parser(__doc__.split("\n")[0], prog="python -m hat.data.corpus")
    ap.add_argument("--out", required=True, type=Path, help="output directory (e.g. data/corpus)")
    ap.add_argument("--workdir", type=Path,
                    help="where to download/unpack the .deb files (default: a temporary dir); "
                         ".deb files already there are reused")
    ap.add_argument("--extracted", type=Path,
                    help="directory where the packages are already unpacked (skips apt-get)")
    args = ap.parse_args(argv)
    tmp = None
    try:
        if args.extracted:
            root, versions = args.extracted, read_versions(args.extracted)
        else:
            workdir = args.workdir
            if workdir is None:
                tmp = tempfile.mkdtemp(prefix="hat-corpus-")
                workdir = Path(tmp)
            root, versions = fetch_packages(workdir)
        m = build(root, args.out, versions)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for pair, p in m["pairs"].items():
        sp = p["splits"]
        print(f"{pair}: train {sp['train']['total']} valid {sp['valid']['total']} "
              f"test {sp['test']['total']} (kept " + ", ".join(f"{o} {p['kept'][o]}" for o in ORIGINS)
              + f"; raw " + ", ".join(f"{o} {p['raw'][o]}" for o in ORIGINS)
              + f") -> {args.out / p['file']} {p['bytes_xz']} bytes")
    return 0


if __name__ == "__main__":
    from hat.cli import run

    run(main)
