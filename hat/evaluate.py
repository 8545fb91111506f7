"""HAT's evaluation, one function per quantity, and the text side of translation (no fairseq here).

HAT evaluates a model with ``configs/<task>/test.sh``: ``generate.py --remove-bpe`` prints ``H-``/``T-`` lines, then

* **BLEU** ("normal", the BLEU column of HAT's README): hypotheses and references as they are in the binarized data
  (Moses-tokenized, BPE removed), hyphenated compounds split by ``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT##
  $2}g'`` (:func:`split_compounds`), scored by ``score.py`` with fairseq's tokenized-BLEU scorer
  (:func:`tokenized_bleu`, printed by :meth:`BleuStats.result_string` as ``BLEU4 = ...``);
* **SacreBLEU** ("sacre", the SacreBLEU column): both sides through ``sacremoses detokenize`` (its default language,
  ``en``, for every task: :func:`moses_detokenize`), scored by ``score.py --sacrebleu`` (:func:`sacre_bleu`).

:func:`remove_bpe` is fairseq's ``--remove-bpe`` (subword-nmt's ``@@ ``). A codec converts raw text to the subword
string a model reads and back (``generate.py --input``): :class:`SentencePieceCodec` (the demo) or
:class:`MosesSubwordCodec` (HAT's paper tasks: Moses tokenization + subword-nmt BPE); :func:`choose_bpe` says which.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

from hat.errors import ConfigError, HatError

BPE_SYMBOL = "@@ "  # subword-nmt's continuation marker as fairseq's --remove-bpe removes it
HAT_DETOK_LANG = "en"  # HAT's test.sh runs `sacremoses detokenize` without -l: English rules for every task
# fairseq's Dictionary: the specials of a fresh dictionary, as HAT's score.py builds one
_PAD, _EOS, _UNK = "<pad>", "</s>", "<unk>"
_COMPOUND = re.compile(r"(\S)-(\S)", re.ASCII)  # perl's \S on bytes: every non-ASCII character is non-space


# ---- HAT's post-processing ------------------------------------------------------------------------------------------

def bpe_symbol(post_process: Optional[str]) -> Optional[str]:
    """The string fairseq's ``--remove-bpe [SYMBOL]`` (``--post-process``) removes: ``subword_nmt`` (the bare flag)
    means ``@@ ``; ``None`` stays None; ``sentencepiece`` is handled by the sentencepiece codec, not here."""
    if post_process in (None, "sentencepiece"):
        return None
    if post_process in ("subword_nmt", "@@"):
        return BPE_SYMBOL
    if post_process in ("letter", "wordpiece", "silence", "_EOW", "none"):
        raise ConfigError(f"--remove-bpe {post_process}: generate.py handles subword-nmt ('@@ ', the bare flag) or "
                          f"sentencepiece data")
    return post_process


def remove_bpe(line: str, symbol: str = BPE_SYMBOL) -> str:
    """fairseq's ``--remove-bpe``: ``'new@@ ton'`` -> ``'newton'`` (``(line + ' ').replace(symbol, '').rstrip()``)."""
    return (line + " ").replace(symbol, "").rstrip()


def split_compounds(line: str) -> str:
    """HAT's ``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'``: ``'a-b'`` -> ``'a ##AT##-##AT## b'`` (matches do
    not overlap, so ``'a-b-c'`` -> ``'a ##AT##-##AT## b-c'``, as perl does)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def _sacremoses():
    try:
        import sacremoses
    except ImportError:  # pragma: no cover - depends on the environment
        raise HatError("sacremoses is not installed: pip install sacremoses") from None
    return sacremoses


def moses_detokenize(lines: Iterable[str], lang: str = HAT_DETOK_LANG) -> List[str]:
    """``sacremoses -l LANG detokenize`` (XML entities unescaped), one line each."""
    detok = _sacremoses().MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split(), return_str=True, unescape=True) for line in lines]


def moses_tokenize(lines: Iterable[str], lang: str, dash_splits: bool = True, escape: bool = True,
                   normalize: bool = False) -> List[str]:
    """``sacremoses -l LANG [normalize -c] tokenize [-a]`` one line each (fairseq's ``--tokenizer moses``:
    ``dash_splits`` is ``not --moses-no-dash-splits``, ``escape`` is ``not --moses-no-escape``)."""
    sm = _sacremoses()
    tok = sm.MosesTokenizer(lang=lang)
    norm = sm.MosesPunctNormalizer(lang=lang, post_remove_control_chars=True) if normalize else None
    out = []
    for line in lines:
        if norm is not None:
            line = norm.normalize(line)
        out.append(tok.tokenize(line, aggressive_dash_splits=dash_splits, return_str=True, escape=escape))
    return out


# ---- tokenized BLEU (fairseq's scorer, as HAT's score.py) -----------------------------------------------------------

@dataclass
class BleuStats:
    """fairseq's ``BleuStat``: corpus lengths and n-gram (1..4) matches/counts; the figures as fairseq prints them."""
    reflen: int = 0
    predlen: int = 0
    match: List[int] = field(default_factory=lambda: [0, 0, 0, 0])
    count: List[int] = field(default_factory=lambda: [0, 0, 0, 0])

    @classmethod
    def one_init(cls) -> "BleuStats":
        """``--sentence-bleu``'s +1 smoothing of the 2..4-gram precisions (fairseq's ``bleu_one_init``)."""
        return cls(match=[0, 1, 1, 1], count=[0, 1, 1, 1])

    def precision(self) -> List[float]:
        return [m / c if c > 0 else 0 for m, c in zip(self.match, self.count)]

    def brevity(self) -> float:
        return min(1, math.exp(1 - self.reflen / self.predlen))

    def score(self, order: int = 4) -> float:
        psum = sum(math.log(p) if p > 0 else float("-inf") for p in self.precision()[:order])
        return self.brevity() * math.exp(psum / order) * 100

    def result_string(self, order: int = 4) -> str:
        """``BLEU4 = 27.80, 58.9/33.5/21.2/13.9 (BP=1.000, ratio=1.013, syslen=63078, reflen=62688)``."""
        fmt = "BLEU{} = {:2.2f}, {:2.1f}" + "/{:2.1f}" * (order - 1)
        fmt += " (BP={:.3f}, ratio={:.3f}, syslen={}, reflen={})"
        return fmt.format(order, self.score(order), *[p * 100 for p in self.precision()[:order]], self.brevity(),
                          self.predlen / self.reflen, self.predlen, self.reflen)


def _fairseq_tokens(line: str, is_ref: bool) -> list:
    """A line as fairseq's scorer sees it: words + EOS (``Dictionary.encode_line``), leading pads and trailing
    EOS/pads trimmed but never the first token (libbleu's ``bleu_trim``); an ``<unk>`` of the reference never
    matches."""
    toks: list = line.split() + [_EOS]
    start = 0
    while start < len(toks) and toks[start] == _PAD:
        start += 1
    toks = toks[start:]
    end = len(toks) - 1
    while end > 0 and toks[end] in (_EOS, _PAD):
        end -= 1
    toks = toks[:end + 1]
    if is_ref:
        toks = [object() if t == _UNK else t for t in toks]
    return toks


def _ngrams(toks: Sequence, n: int) -> dict:
    counts: dict = {}
    for i in range(len(toks) - n + 1):
        g = tuple(toks[i:i + n])
        counts[g] = counts.get(g, 0) + 1
    return counts


def add_sentence(stats: BleuStats, hyp: str, ref: str) -> None:
    """fairseq's ``bleu_add``: one sentence's lengths and clipped n-gram matches into ``stats``."""
    h, r = _fairseq_tokens(hyp, False), _fairseq_tokens(ref, True)
    stats.reflen += len(r)
    stats.predlen += len(h)
    for n in range(1, 5):
        if len(h) < n:
            continue
        stats.count[n - 1] += len(h) - n + 1
        hc, rc = _ngrams(h, n), _ngrams(r, n)
        stats.match[n - 1] += sum(min(c, hc.get(g, 0)) for g, c in rc.items())


def _check_pair(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise HatError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise HatError("nothing to score: no sentences")


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str], ignore_case: bool = False) -> BleuStats:
    """Corpus BLEU on already tokenized text, exactly HAT's ``score.py`` (fairseq's scorer on whitespace-split
    words; equal to ``sacrebleu`` with ``tokenize='none'`` whenever every n-gram order has a match)."""
    _check_pair(hyps, refs)
    stats = BleuStats()
    for h, r in zip(hyps, refs):
        if ignore_case:
            h, r = h.lower(), r.lower()
        add_sentence(stats, h, r)
    return stats


def sentence_bleus(hyps: Sequence[str], refs: Sequence[str], ignore_case: bool = False) -> List[BleuStats]:
    """HAT's ``score.py --sentence-bleu``: each sentence on its own, with +1 smoothing."""
    _check_pair(hyps, refs)
    out = []
    for h, r in zip(hyps, refs):
        stats = BleuStats.one_init()
        add_sentence(stats, h.lower() if ignore_case else h, r.lower() if ignore_case else r)
        out.append(stats)
    return out


def sacre_bleu(hyps: Sequence[str], refs: Sequence[str], lowercase: bool = False) -> Tuple[object, str]:
    """SacreBLEU on detokenized text (its default 13a tokenization): (BLEUScore, signature)."""
    _check_pair(hyps, refs)
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
    score = bleu.corpus_score(list(hyps), [list(refs)])
    return score, str(bleu.get_signature())


def read_lines(path: str, what: str) -> List[str]:
    """The lines of a UTF-8 text file (``-`` is stdin) without their newline; one clear error otherwise."""
    import sys

    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.isfile(path):
        raise HatError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise HatError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---- raw text <-> subword strings (generate.py --input) --------------------------------------------------------------

class SentencePieceCodec:
    """The demo's pre-processing: sentencepiece pieces (``hat.data.prepare``), no separate tokenizer."""
    kind = "sentencepiece"

    def __init__(self, model_path: str):
        from hat.data.prepare import load_spm

        self.model_path = model_path
        self.sp = load_spm(model_path)  # one line when it is missing or not a model

    def encode(self, line: str) -> str:
        from hat.data.prepare import encode

        return encode(line, self.sp)

    def unbpe(self, pieces: str) -> str:
        """The subword string as text: for sentencepiece the pieces decoded."""
        from hat.data.prepare import detokenize

        return detokenize(pieces, self.sp)

    def detokenize(self, texts: Sequence[str]) -> List[str]:
        return list(texts)

    def describe(self) -> str:
        return f"sentencepiece {self.model_path}"


class MosesSubwordCodec:
    """HAT's paper tasks: [Moses punctuation normalization,] Moses tokenization[, lowercasing], subword-nmt BPE with
    the task's codes; back: BPE removed (``@@ ``), Moses detokenization."""
    kind = "subword_nmt"

    def __init__(self, src_lang: str, tgt_lang: str, codes: Optional[str] = None, separator: str = "@@",
                 symbol: Optional[str] = None, dash_splits: bool = True, escape: bool = True, lowercase: bool = False,
                 normalize: bool = False, detok_lang: Optional[str] = None):
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.codes, self.separator = codes, separator
        self.symbol = symbol or separator + " "  # what --remove-bpe removes
        self.dash_splits, self.escape, self.lowercase, self.normalize = dash_splits, escape, lowercase, normalize
        self.detok_lang = detok_lang or tgt_lang
        self._bpe = None

    def _apply_bpe(self):
        if self._bpe is None:
            if not self.codes:
                raise HatError("raw text on BPE data needs the BPE codes the data was built with: --bpe subword_nmt "
                               "--bpe-codes FILE (preprocess.sh writes data/text/<name>/tokenized/code)")
            if not os.path.isfile(self.codes):
                raise HatError(f"BPE codes not found: {self.codes}")
            try:
                from subword_nmt.apply_bpe import BPE
            except ImportError:  # pragma: no cover - depends on the environment
                raise HatError("subword-nmt is not installed: pip install subword-nmt") from None
            try:
                with open(self.codes, encoding="utf-8") as f:
                    self._bpe = BPE(f, separator=self.separator)
            except (ValueError, IndexError, UnicodeDecodeError) as e:
                raise HatError(f"{self.codes} is not a subword-nmt codes file ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return self._bpe

    def encode(self, line: str) -> str:
        bpe = self._apply_bpe()
        tok = moses_tokenize([line], self.src_lang, self.dash_splits, self.escape, self.normalize)[0]
        if self.lowercase:
            tok = tok.lower()
        return bpe.process_line(tok).strip()

    def unbpe(self, pieces: str) -> str:
        """The subword string as Moses-tokenized text (HAT's ``H-`` line)."""
        return remove_bpe(pieces, self.symbol)

    def detokenize(self, texts: Sequence[str]) -> List[str]:
        return moses_detokenize(texts, self.detok_lang)

    def describe(self) -> str:
        steps = (["Moses normalize"] if self.normalize else []) + [
            f"Moses tokenize ({self.src_lang}{', -a' if self.dash_splits else ''}"
            f"{'' if self.escape else ', no escape'})"] + (["lowercase"] if self.lowercase else [])
        return " + ".join(steps) + f" + subword-nmt {self.codes}"


def choose_bpe(bpe: Optional[str], post_process: Optional[str], spm_model: Optional[str]) -> str:
    """Which pre-processing the data has: ``--bpe`` if given (sentencepiece or subword_nmt), else sentencepiece when
    ``--remove-bpe sentencepiece`` or a sentencepiece model is there (the demo's ``<data>/spm.model``), else
    subword-nmt (HAT's Moses + BPE data)."""
    if bpe is not None:
        if bpe not in ("sentencepiece", "subword_nmt"):
            raise ConfigError(f"--bpe {bpe}: generate.py handles sentencepiece (the demo) or subword_nmt (HAT's tasks)")
        return bpe
    if post_process == "sentencepiece" or (spm_model and os.path.isfile(spm_model)):
        return "sentencepiece"
    return "subword_nmt"
