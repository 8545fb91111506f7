"""Prepare the embedded demo corpus for fairseq: raw text, joint BPE, binarised data.

Usage::

    python -m hat.data.prepare --pair de-en --dest data-bin/demo.de-en \\
        [--corpus data/corpus] [--vocab-size 8000] [--workers 2] [--force]

Steps: read ``<corpus>/<pair>.tsv.xz`` (see :mod:`hat.data.corpus`), write the
detokenised splits to ``<dest>/raw/{train,valid,test}.{src,tgt}`` (and
``.origin``), train one sentencepiece BPE model on both training sides
(``<dest>/spm.model``, ``spm.vocab``), encode every split to space-separated
pieces (``<dest>/tok/``) and binarise them with ``fairseq-preprocess
--joined-dictionary`` into ``<dest>`` (``train.de-en.de.bin``, ``dict.de.txt``, ...).

The result is built in a temporary directory next to ``dest`` and renamed into
place at the end; ``<dest>/.done`` records the parameters, and a later call with
the same parameters (and the same corpus file) returns at once.

:func:`detokenize` turns space-separated pieces (e.g. ``fairseq-generate`` output)
back into text with the sentencepiece model, for BLEU against ``<dest>/raw/test.<tgt>``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from hat.config import stage_parser
from hat.data.corpus import SPLITS, CorpusError, corpus_file, load_corpus
from hat.errors import HatError
from hat.io import sha256_file

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
FORMAT_VERSION = 2
DONE = ".done"


class PrepareError(HatError):
    """A problem worth one line on stderr."""


def _langs(pair: str) -> List[str]:
    parts = pair.split("-")
    if len(parts) != 2 or not all(parts):
        raise PrepareError(f"bad language pair {pair!r}: expected SRC-TGT such as de-en")
    return parts


def read_done(dest: Path) -> Optional[dict]:
    """The ``.done`` record of a prepared directory, or None."""
    try:
        return json.loads((Path(dest) / DONE).read_text())
    except (OSError, ValueError):
        return None


def _spm():
    try:
        import sentencepiece
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrepareError(f"sentencepiece is not installed ({e})") from None
    return sentencepiece


def load_spm(spm_model):
    if isinstance(spm_model, (str, os.PathLike)):
        path = Path(spm_model)
        if not path.is_file():
            raise PrepareError(f"sentencepiece model not found: {path}")
        try:
            return _spm().SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise PrepareError(f"cannot load sentencepiece model {path}: {str(e).splitlines()[0]}") from None
    return spm_model  # already a SentencePieceProcessor


def detokenize(lines: Union[str, Iterable[str]], spm_model) -> Union[str, List[str]]:
    """Decode space-separated sentencepiece pieces back to text.

    ``spm_model`` is a path to ``spm.model`` or a loaded ``SentencePieceProcessor``.
    A single string gives a string; an iterable of lines gives a list.
    """
    sp = load_spm(spm_model)
    if isinstance(lines, str):
        return sp.decode_pieces(lines.split())
    return [sp.decode_pieces(line.split()) for line in lines]


def encode(lines: Union[str, Iterable[str]], spm_model) -> Union[str, List[str]]:
    """Text to space-separated sentencepiece pieces (the inverse of :func:`detokenize`)."""
    sp = load_spm(spm_model)
    if isinstance(lines, str):
        return " ".join(sp.encode(lines, out_type=str))
    return [" ".join(p) for p in sp.encode(list(lines), out_type=str)]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def _train_spm(inputs: Sequence[Path], prefix: Path, vocab_size: int) -> None:
    """Train the joint BPE model on the lines of ``inputs``; writes ``prefix.model/.vocab``.

    Sentences are fed from memory and the model written through ``model_writer``,
    so no temporary path ends up inside the model: same data, same bytes.
    """
    spm = _spm()

    def sentences():
        for path in inputs:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\n")

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            normalization_rule_name="identity",  # exact round trip: detokenize(encode(x)) == x
            input_sentence_size=0,          # use every sentence: no sampling, deterministic
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise PrepareError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
    model_path = prefix.with_name(prefix.name + ".model")
    model_path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    _write_lines(prefix.with_name(prefix.name + ".vocab"),
                 [f"{sp.id_to_piece(i)}\t{sp.get_score(i) or 0.0:g}" for i in range(sp.get_piece_size())])


def _binarize(src: str, tgt: str, tok: Path, destdir: Path, workers: int) -> None:
    if importlib.util.find_spec("fairseq_cli") is None:
        raise PrepareError(f"fairseq is not importable from {sys.executable} "
                           "(install fairseq-fixed, see tools/install.sh)")
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess",
           "--source-lang", src, "--target-lang", tgt, "--joined-dictionary",
           "--trainpref", str(tok / "train"), "--validpref", str(tok / "valid"),
           "--testpref", str(tok / "test"), "--destdir", str(destdir),
           "--workers", str(workers)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (destdir / "preprocess.out").write_text(r.stdout)
    if r.returncode != 0:
        last = [ln for ln in r.stdout.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        raise PrepareError(f"fairseq-preprocess failed (rc={r.returncode}): {last[0]}")


def _count_dict(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def prepare(pair: str = "de-en", dest: Union[str, Path] = "data-bin/demo.de-en",
            corpus_dir: Union[str, Path, None] = None, vocab_size: int = 8000,
            workers: int = 2, force: bool = False, quiet: bool = False) -> Path:
    """Build (or reuse) the fairseq data directory ``dest`` for ``pair``; returns its path."""
    t0 = time.time()
    src, tgt = _langs(pair)
    dest = Path(dest).absolute()
    corpus_dir = Path(corpus_dir) if corpus_dir is not None else DEFAULT_CORPUS
    if vocab_size < 100:
        raise PrepareError(f"vocab size {vocab_size} is too small")
    if workers < 1:
        raise PrepareError(f"workers must be >= 1, got {workers}")
    try:
        cfile, _ = corpus_file(corpus_dir, pair)
    except CorpusError as e:
        raise PrepareError(str(e)) from None
    if not cfile.is_file():
        raise PrepareError(f"corpus file not found: {cfile} (build it with python -m hat.data.corpus)")
    params = {"format": FORMAT_VERSION, "pair": pair, "vocab_size": vocab_size,
              "corpus_file": cfile.name, "corpus_sha256": sha256_file(cfile)}

    done = read_done(dest)
    if not force and done is not None and done.get("params") == params:
        if not quiet:
            print(_summary(dest, done, "up to date"))
        return dest
    if dest.exists() and (not dest.is_dir() or (done is None and any(dest.iterdir()))):
        raise PrepareError(f"{dest} exists and is not a prepared data directory; "
                           "remove it or choose another --dest")

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        try:
            data = load_corpus(corpus_dir, pair)
        except CorpusError as e:
            raise PrepareError(str(e)) from None
        raw, tok = tmp / "raw", tmp / "tok"
        raw.mkdir()
        tok.mkdir()
        counts: Dict[str, int] = {}
        for split in SPLITS:
            rows = data[split]
            if not rows:
                raise PrepareError(f"{cfile}: split {split!r} is empty")
            counts[split] = len(rows)
            _write_lines(raw / f"{split}.{src}", [r[0] for r in rows])
            _write_lines(raw / f"{split}.{tgt}", [r[1] for r in rows])
            _write_lines(raw / f"{split}.origin", [r[2] for r in rows])

        _train_spm([raw / f"train.{src}", raw / f"train.{tgt}"], tmp / "spm", vocab_size)
        sp = load_spm(tmp / "spm.model")
        for split in SPLITS:
            for lang in (src, tgt):
                lines = (raw / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
                _write_lines(tok / f"{split}.{lang}", encode(lines, sp))

        _binarize(src, tgt, tok, tmp, workers)
        record = {"params": params, "sentences": counts, "spm_vocab": sp.get_piece_size(),
                  "dict_size": _count_dict(tmp / f"dict.{src}.txt")}
        (tmp / DONE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        # swap into place: nothing half-written ever carries the final name
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, old / "d")
        os.rename(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(_summary(dest, record, f"built in {time.time() - t0:.0f}s"))
    return dest


def _summary(dest: Path, record: dict, how: str) -> str:
    p, n = record["params"], record["sentences"]
    return (f"{p['pair']} -> {dest}: train {n['train']} valid {n['valid']} test {n['test']} "
            f"sentences, spm vocab {record['spm_vocab']}, fairseq dict {record['dict_size']} ({how})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = stage_parser("Prepare the embedded demo corpus for fairseq.", prog="python -m hat.data.prepare")
    ap.add_argument("--pair", default="de-en", help="SRC-TGT: de-en, en-de, en-fr or fr-en")
    ap.add_argument("--dest", required=True, type=Path, help="output data directory")
    ap.add_argument("--corpus", type=Path, default=None,
                    help=f"embedded corpus directory (default: {DEFAULT_CORPUS})")
    ap.add_argument("--vocab-size", type=int, default=8000, help="joint BPE vocabulary size")
    ap.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    try:
        prepare(args.pair, args.dest, args.corpus, args.vocab_size, args.workers, force=args.force)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from hat.cli import run

    run(main)
