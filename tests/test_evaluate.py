"""HAT's evaluation path (configs/<task>/test.sh, score.py, generate.py --remove-bpe) and raw-text translation
(generate.py --input), checked against the tools HAT ran: sacrebleu, fairseq's BLEU scorer, perl's compound
splitting, the sacremoses and subword-nmt command lines, fairseq-preprocess.

Scored text: tests/fixtures/eval_ref.tok.en (30 Moses-tokenized English sentences of the embedded corpus' test split)
and eval_hyp.tok.en (the same, deliberately altered: words dropped, swapped, replaced, lines truncated)."""
import io
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import FIXTURES, ROOT, run_script

REF = os.path.join(FIXTURES, "eval_ref.tok.en")
HYP = os.path.join(FIXTURES, "eval_hyp.tok.en")
BIN = os.path.dirname(sys.executable)  # the venv's sacremoses and subword-nmt command lines
SHIPPED = os.path.join(ROOT, "pretrained", "demo.de-en", "space0.pt")
DEMO_SUB = os.path.join(ROOT, "configs", "demo.de-en", "subtransformer", "demo_small.yml")
DEMO_COMMON = os.path.join(ROOT, "configs", "demo.de-en", "subtransformer", "common.yml")
IWSLT_COMMON = os.path.join(ROOT, "configs", "iwslt14.de-en", "subtransformer", "common.yml")
PERL_SPLIT = r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"  # HAT's configs/<task>/test.sh


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(r + "\n" for r in rows))
    return str(path)


def perl_split(rows):
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    p = subprocess.run(["perl", "-ple", PERL_SPLIT], input="".join(r + "\n" for r in rows), capture_output=True,
                       text=True, check=True)
    return p.stdout.split("\n")[:-1]


def sacremoses_cli(args, rows):
    p = subprocess.run([os.path.join(BIN, "sacremoses"), "-q", *args], input="".join(r + "\n" for r in rows),
                       capture_output=True, text=True, check=True)
    return p.stdout.split("\n")[:-1]


def bleu4_figures(line):
    """(score, 4 precisions, syslen, reflen) of fairseq's ``BLEU4 = ...`` line."""
    m = re.search(r"BLEU4 = ([\d.]+), ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) \(BP=[\d.]+, ratio=[\d.]+, syslen=(\d+), "
                  r"reflen=(\d+)\)", line)
    assert m, line
    return float(m.group(1)), [float(m.group(i)) for i in range(2, 6)], int(m.group(6)), int(m.group(7))


def assert_equals_sacrebleu_none(line, hyps, refs):
    """fairseq's tokenized BLEU = sacrebleu without tokenization (every order has a match here)."""
    import sacrebleu

    s = sacrebleu.metrics.BLEU(tokenize="none").corpus_score(hyps, [refs])
    score, prec, syslen, reflen = bleu4_figures(line)
    assert (syslen, reflen) == (s.sys_len, s.ref_len)
    assert prec == [round(p, 1) for p in s.precisions]
    assert score == pytest.approx(s.score, abs=0.005)
    return s


# ---- score.py, compound splitting, remove-bpe, detokenization -------------------------------------------------------

def test_compound_splitting_is_hats_perl_one_liner():
    from hat.evaluate import split_compounds

    rows = lines(REF) + ["a-b-c d--e -f g- x - y", "Mehrwert-steuer-pflichtig", "e-mail A-Ü ß-x 3-4 \u00a0-b", ""]
    assert [split_compounds(r) for r in rows] == perl_split(rows)
    assert split_compounds("non-native") == "non ##AT##-##AT## native"


def test_score_py_tokenized_bleu_equals_sacrebleu_on_compound_split_text(tmp_path):
    from hat.evaluate import split_compounds

    hyps, refs = [split_compounds(x) for x in lines(HYP)], [split_compounds(x) for x in lines(REF)]
    assert sum("##AT##" in r for r in refs) >= 5  # the fixture has compounds to split
    r = run_script("score.py", "--sys", write(tmp_path / "sys", hyps), "--ref", write(tmp_path / "ref", refs))
    assert r.returncode == 0, r.stderr
    s = assert_equals_sacrebleu_none(r.stdout.strip(), hyps, refs)
    assert 30 < s.score < 90  # the altered hypothesis is neither perfect nor unrelated
    # splitting changes the figure (the split "##AT##-##AT##" tokens are matched n-grams)
    r2 = run_script("score.py", "--sys", HYP, "--ref", REF)
    assert bleu4_figures(r2.stdout)[0] != bleu4_figures(r.stdout)[0]
    # --order, --ignore-case, stdin as HAT's score.py: compare with sacrebleu's own precisions
    r3 = subprocess.run([sys.executable, "score.py", "--ref", REF, "--order", "2", "--ignore-case"], cwd=ROOT,
                        input=open(HYP).read().upper(), capture_output=True, text=True)
    import sacrebleu

    low = sacrebleu.metrics.BLEU(tokenize="none", lowercase=True, max_ngram_order=2).corpus_score(lines(HYP),
                                                                                                 [lines(REF)])
    m = re.match(r"BLEU2 = ([\d.]+), ([\d.]+)/([\d.]+) \(", r3.stdout)
    assert m and [float(m.group(2)), float(m.group(3))] == [round(p, 1) for p in low.precisions], r3.stdout
    assert float(m.group(1)) == pytest.approx(low.score, abs=0.005)


def test_tokenized_bleu_is_fairseqs_scorer_on_edge_cases():
    """Empty lines, <unk> (never matches), <pad>/</s> as words, one-word lines: HAT's score.py's own scorer."""
    from fairseq.data import Dictionary
    from fairseq.scoring.bleu import BleuConfig, Scorer

    from hat.evaluate import sentence_bleus, tokenized_bleu

    hyps = lines(HYP)[:6] + ["", "x", "<unk> a b c", "<pad> a b </s>", "a b c d e", ""]
    refs = lines(REF)[:6] + ["a b", "", "<unk> a b c", "a b </s> </s>", "a <unk> c d e", ""]
    d = Dictionary()
    corpus = Scorer(BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
    for h, r in zip(hyps, refs):
        corpus.add(d.encode_line(r).int(), d.encode_line(h).int())
        one = Scorer(BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
        one.reset(one_init=True)
        one.add(d.encode_line(r).int(), d.encode_line(h).int())
        assert sentence_bleus([h], [r])[0].result_string() == one.result_string(), (h, r)
    ours = tokenized_bleu(hyps, refs)
    for order in (1, 2, 3, 4):
        assert ours.result_string(order) == corpus.result_string(order)


def test_score_py_sacrebleu_on_detokenized_text(tmp_path):
    import sacrebleu

    from hat.evaluate import moses_detokenize

    ref_txt, hyp_txt = sacremoses_cli(["detokenize"], lines(REF)), sacremoses_cli(["detokenize"], lines(HYP))
    assert moses_detokenize(lines(REF)) == ref_txt  # = HAT's `sacremoses detokenize` (default language en)
    assert moses_detokenize(lines(HYP)) == hyp_txt
    assert 'AIDS means "Acquired Immune Deficiency Syndrome".' in ref_txt and "He wasn't out" in ref_txt[1]
    r = run_script("score.py", "--sys", write(tmp_path / "sys", hyp_txt), "--ref", write(tmp_path / "ref", ref_txt),
                   "--sacrebleu")
    assert r.returncode == 0, r.stderr
    expected = sacrebleu.corpus_bleu(hyp_txt, [ref_txt])
    assert r.stdout.startswith(f"{expected} | nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert 30 < expected.score < 90


def test_remove_bpe_undoes_subword_nmt(tmp_path):
    from fairseq.data.data_utils import post_process

    from hat.evaluate import bpe_symbol, remove_bpe

    text = lines(REF)
    codes = tmp_path / "codes"
    with open(codes, "w") as out:
        subprocess.run([os.path.join(BIN, "subword-nmt"), "learn-bpe", "-s", "60"], stdin=open(REF), stdout=out,
                       check=True)
    bpe = subprocess.run([os.path.join(BIN, "subword-nmt"), "apply-bpe", "-c", str(codes)], stdin=open(REF),
                         capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    assert sum("@@ " in b for b in bpe) > 10
    assert [remove_bpe(b) for b in bpe] == text == [post_process(b, "subword_nmt") for b in bpe]
    assert bpe_symbol("subword_nmt") == "@@ " and bpe_symbol(None) is None and bpe_symbol("##") == "##"


def test_score_py_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "latin1"
    bad.write_bytes("Stra\xdfe\n".encode("latin-1"))
    short = write(tmp_path / "short", lines(HYP)[:3])
    empty = write(tmp_path / "empty", [])
    cases = [
        (["--sys", HYP], "--ref"),
        (["--sys", str(tmp_path / "nowhere"), "--ref", REF], "system output not found"),
        (["--sys", HYP, "--ref", str(tmp_path / "nowhere")], "reference file not found"),
        (["--sys", short, "--ref", REF], "has 3 lines but"),
        (["--sys", str(bad), "--ref", REF], "not UTF-8"),
        (["--sys", empty, "--ref", empty], "nothing to score"),
        (["--sys", HYP, "--ref", REF, "--order", "5"], "order"),
        (["--sys", HYP, "--ref", REF, "--bleu"], "--bleu"),
    ]
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda c: run_script("score.py", *c[0]), cases))
    for (argv, needle), r in zip(cases, results):
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (argv, r)
        assert r.stdout == ""


# ---- generate.py: the demo (sentencepiece) and a paper task's Moses + subword-nmt data -----------------------------

def run_generate(argv, capsys, stdin=None, monkeypatch=None):
    from hat.stages.generate import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr()


def test_generate_input_translates_raw_text_with_the_demo_model(demo_data, tmp_path, capsys, monkeypatch):
    src = lines(os.path.join(demo_data, "raw", "test.de"))[:4]
    text = src[:2] + [""] + src[2:]
    base = [f"--configs={DEMO_SUB}", f"--sub-configs={DEMO_COMMON}", "--data", demo_data, "--path", SHIPPED, "--cpu",
            "--beam", "2", "--max-len-a", "0", "--max-len-b", "12"]
    out = tmp_path / "out.en"
    r = run_generate(base + ["--input", write(tmp_path / "in.de", text), "--results-path", out], capsys)
    assert "pre-processing: sentencepiece" in r.err and r.out == ""
    got = lines(out)
    assert len(got) == 5 and got[2] == "" and all(got[i] for i in (0, 1, 3, 4))
    assert not any("\u2581" in g for g in got)  # pieces decoded
    # stdin, with fairseq's per-sentence lines: the same translations, source pieces decoded back to the input
    r = run_generate(base + ["--input", "-", "--print-sentences"], capsys, stdin="\n".join(text) + "\n",
                     monkeypatch=monkeypatch)
    d = {int(m.group(1)): m.group(2) for m in re.finditer(r"^D-(\d+)\t\S+\t(.*)$", r.out, re.M)}
    s = {int(m.group(1)): m.group(2) for m in re.finditer(r"^S-(\d+)\t(.*)$", r.out, re.M)}
    assert d == {i: got[i] for i in (0, 1, 3, 4)} and s == {i: text[i] for i in (0, 1, 3, 4)}


def _standin_task(tmp):
    """A stand-in for HAT's IWSLT'14 De-En data (preprocess.sh's steps at toy size): 16 test pairs of the embedded
    corpus with a hyphen in English, tokenized by the sacremoses command line (no -a), joint subword-nmt BPE,
    binarized by fairseq with a joined dictionary the size of the shipped demo model's vocabulary (our subwords
    first, most frequent first, then fillers): the demo model translates it into nonsense made of our subwords."""
    import torch
    from fairseq import options
    from fairseq_cli import preprocess

    from hat.data.corpus import load_corpus

    rows = [r for r in load_corpus(os.path.join(ROOT, "data", "corpus"), "de-en")["test"] if "-" in r[1]][:16]
    raw = {"de": [r[0] for r in rows], "en": [r[1] for r in rows]}
    tok = {lang: sacremoses_cli(["-l", lang, "tokenize"], raw[lang]) for lang in raw}
    text = tmp / "text"
    text.mkdir()
    for lang in tok:
        write(text / f"tok.{lang}", tok[lang])
    codes = text / "code"
    with open(codes, "w") as out:
        subprocess.run([os.path.join(BIN, "subword-nmt"), "learn-bpe", "-s", "150"],
                       input="".join(x + "\n" for x in tok["de"] + tok["en"]), text=True, stdout=out, check=True)
    counts = {}
    for lang in tok:
        with open(text / f"tok.{lang}") as f:
            bpe = subprocess.run([os.path.join(BIN, "subword-nmt"), "apply-bpe", "-c", str(codes)], stdin=f,
                                 capture_output=True, text=True, check=True).stdout
        write(text / f"test.{lang}", bpe.split("\n")[:-1])
        for w in bpe.split():
            counts[w] = counts.get(w, 0) + 1
    vocab = torch.load(SHIPPED, map_location="cpu", weights_only=False)["model"]["encoder.core.embed_tokens.weight"]
    words = sorted(counts, key=lambda w: (-counts[w], w))
    words += [f"madeupword{i:04d}" for i in range(vocab.shape[0] - 4 - len(words))]
    write(text / "dict.txt", [f"{w} {counts.get(w, 0)}" for w in words])
    data = tmp / "binary" / "iwslt14_de_en"
    args = options.get_preprocessing_parser().parse_args(
        ["--source-lang", "de", "--target-lang", "en", "--testpref", str(text / "test"), "--destdir", str(data),
         "--srcdict", str(text / "dict.txt"), "--joined-dictionary", "--workers", "1"])
    preprocess.main(args)
    return {"data": str(data), "codes": str(codes), "raw": raw, "tok": tok}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    pytest.importorskip("fairseq")
    return _standin_task(tmp_path_factory.mktemp("standin"))


STANDIN_GEN = ["--beam", "5", "--batch-size", "128", "--remove-bpe", "--cpu", "--max-len-a", "0", "--max-len-b", "6"]


@pytest.mark.slow
def test_generate_on_bpe_data_prints_hats_bleu_and_sacrebleu(standin, tmp_path, capsys, monkeypatch):
    """A paper task's path: H/T with the BPE removed, tokenized BLEU with compounds split and SacreBLEU on
    Moses-detokenized text, each equal to what HAT's test.sh computes with perl, sacremoses and sacrebleu."""
    import sacrebleu

    base = [f"--configs={DEMO_SUB}", f"--sub-configs={IWSLT_COMMON}", "--data", standin["data"], "--path", SHIPPED]
    r = run_generate(base + STANDIN_GEN + ["--print-sentences", "--results-path", tmp_path / "hyp"], capsys)
    hyp = [m.group(1) for m in re.finditer(r"^H-\d+\t\S+\t(.*)$", r.out, re.M)]
    ref = [m.group(1) for m in re.finditer(r"^T-\d+\t(.*)$", r.out, re.M)]
    assert ref == standin["tok"]["en"]  # the references with their BPE removed are the tokenized text again
    assert len(hyp) == 16 and not any("@@" in h for h in hyp) and sum(map(len, hyp)) > 0
    summary = r.out.strip().splitlines()[-4:]
    assert summary[0].startswith("| SubTransformer ") and "16 sentences, de->en, beam 5" in summary[0]
    assert "tokenized BLEU" in summary[1] and "SacreBLEU" in summary[2]
    from fairseq.data import Dictionary
    from fairseq.scoring.bleu import BleuConfig, Scorer

    d = Dictionary()
    scorer = Scorer(BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
    for h, t in zip(perl_split(hyp), perl_split(ref)):
        scorer.add(d.encode_line(t).int(), d.encode_line(h).int())
    assert summary[1].endswith(": " + scorer.result_string())  # = test.sh normal: perl + HAT's score.py
    hyp_txt, ref_txt = sacremoses_cli(["detokenize"], hyp), sacremoses_cli(["detokenize"], ref)
    bleu = sacrebleu.metrics.BLEU()
    expected = bleu.corpus_score(hyp_txt, [ref_txt])
    assert summary[3] == f"BLEU = {expected.score:.2f} | {bleu.get_signature()} | {expected}"
    assert lines(tmp_path / "hyp") == hyp_txt

    # raw text: the untokenized German sources through Moses + the task's BPE codes translate exactly as the split
    d_lines = [m.group(1) for m in re.finditer(r"^D-\d+\t\S+\t(.*)$", r.out, re.M)]
    r2 = run_generate(base + STANDIN_GEN + ["--input", "-", "--bpe", "subword_nmt", "--bpe-codes", standin["codes"],
                                            "--tokenizer", "moses", "--moses-no-dash-splits", "--detok-lang", "en"],
                      capsys, stdin="\n".join(standin["raw"]["de"]) + "\n", monkeypatch=monkeypatch)
    assert r2.out.split("\n")[:-1] == d_lines == hyp_txt
    assert "Moses tokenize (de) + subword-nmt" in r2.err


def test_generate_keys_leave_fairseqs_own_config_intact(tmp_path):
    """train.py and evo_search.py parse generate.py's keys too; fairseq turns the parsed flags into its config, which
    has fields of the same names (fairseq-interactive's ``input``): none may be overridden."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from hat.fairseq_plugin.args import build_args

    for extra in ([], ["--input", "x.txt", "--print-sentences", "--detok-lang", "de", "--input-lowercase"]):
        args = build_args(["--data", str(tmp_path), "--arch", "transformersuper_demo"] + extra)
        cfg = convert_namespace_to_omegaconf(args)
        assert cfg.interactive.input == "-"
    assert args.raw_input == "x.txt"


def test_generate_input_errors_are_one_line(standin, tmp_path, capsys, monkeypatch):
    from hat.errors import HatError
    from hat.stages.generate import main

    base = [f"--configs={DEMO_SUB}", f"--sub-configs={IWSLT_COMMON}", "--data", standin["data"], "--path", SHIPPED,
            "--cpu"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("Guten Tag.\n"))
    with pytest.raises(HatError, match="needs the BPE codes"):
        main(base + ["--input", "-"])
    with pytest.raises(HatError, match="input file not found"):
        main(base + ["--input", str(tmp_path / "nowhere")])
    with pytest.raises(HatError, match="BPE codes not found"):
        main(base + ["--input", write(tmp_path / "in", ["Guten Tag."]), "--bpe", "subword_nmt", "--bpe-codes",
                     str(tmp_path / "nowhere")])
    with pytest.raises(HatError, match="most"):  # longer than the model's positions
        main(base + ["--input", write(tmp_path / "long", [" ".join(["Tag"] * 2000)]), "--bpe", "subword_nmt",
                     "--bpe-codes", standin["codes"]])


@pytest.mark.slow
def test_test_sh_reproduces_generates_tokenized_bleu(standin, tmp_path, capsys):
    """configs/iwslt14.de-en/test.sh as a HAT user runs it (HAT's arguments, perl, score.py) on the stand-in data:
    the figure generate.py prints itself, and HAT's files next to the model."""
    model = tmp_path / "model" / "HAT_standin.pt"
    model.parent.mkdir()
    shutil.copy(SHIPPED, model)
    env = dict(os.environ, HAT_DATA_DIR=os.path.dirname(os.path.dirname(standin["data"])), PYTHON=sys.executable)
    p = subprocess.run(["bash", os.path.join(ROOT, "configs", "iwslt14.de-en", "test.sh"), str(model), DEMO_SUB,
                        "normal", "0", "test", "--cpu", "--max-len-a", "0", "--max-len-b", "6"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout.strip().splitlines()
    assert out[0] == "Evaluate Normal BLEU score!" and out[-1].startswith("BLEU4 = ")
    gen = model.parent / "exp" / "demo_small.yml_test_gen.out"
    assert sorted(os.listdir(gen.parent)) == [gen.name, gen.name + ".ref", gen.name + ".sys"]
    tok_line = [ln for ln in open(gen) if ln.startswith("| tokenized BLEU")][0]
    assert tok_line.rstrip("\n").endswith(": " + out[-1])
    assert lines(str(gen) + ".ref") == perl_split(standin["tok"]["en"])

    bad = subprocess.run(["bash", os.path.join(ROOT, "configs", "iwslt14.de-en", "test.sh"), str(model), DEMO_SUB,
                          "bleu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: metrics must be normal or sacre, not 'bleu'"
