"""Fault injection against the real scripts (issue 15, items 6, 8 and 9): bad YAML, bad values, data dirs and
checkpoints that are empty, incomplete or truncated, a full disk, a concurrent writer and an interrupt. Each is run
as a user runs it (a subprocess of the top-level script) and must end in ONE line on stderr starting with
``error: ``, exit code 2, no traceback, and nothing half-written (the working directory stays empty; a file that
was there is whole)."""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT

PY = sys.executable
TINY_SPACE = os.path.join(FIXTURES, "tiny_space.yml")
TINY_SUB = os.path.join(FIXTURES, "tiny_sub.yml")
TINY_LAT = os.path.join(FIXTURES, "tiny_latency.yml")
TINY_EVO = os.path.join(FIXTURES, "tiny_evo.yml")
DEMO_SUB = os.path.join(ROOT, "configs", "demo.de-en", "subtransformer", "demo_small.yml")
SHIPPED = os.path.join(ROOT, "pretrained", "demo.de-en", "space0.pt")

# a child that runs a script after installing a fault: HAT_TEST_FAULT=enospc makes the second write to the file
# HAT_TEST_TARGET write half its bytes and then fail with ENOSPC (a disk that fills up mid-row); fsize caps the size
# of every file the child writes (RLIMIT_FSIZE: writes past it fail with EFBIG, also inside torch's C++ writer)
WRAPPER = r'''
import errno, os, resource, runpy, signal, sys

mode = os.environ.get("HAT_TEST_FAULT")
if mode == "enospc":
    target, real, seen = os.environ["HAT_TEST_TARGET"], os.write, [0]

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name == target:
            seen[0] += 1
            if seen[0] >= 2:
                real(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    os.write = write
elif mode == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    n = int(os.environ["HAT_TEST_FSIZE"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
'''


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", PYTHONUNBUFFERED="1", **extra)


def run(script, *args, cwd, env=None, timeout=300, wrapper=None):
    cmd = [PY] + ([str(wrapper)] if wrapper else []) + [os.path.join(ROOT, script)] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


PROGRESS = re.compile(r"^\s*(\w+: )?\d+%\|")  # a progress bar's line (tqdm on stderr), not a message


def one_line_error(p, needle=None):
    """Exit 2, one line on stderr starting with 'error: ' (containing ``needle``), no traceback."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    ok = (p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr
          and (needle is None or needle in lines[0]))
    assert ok, f"exit {p.returncode}, stderr {p.stderr[-1500:]!r}"
    return lines[0]


# ---- the inputs -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    t = tmp_path_factory.mktemp("faults")
    f = {}

    def text(name, body, mode="w"):
        p = t / name
        if mode == "wb":
            p.write_bytes(body)
        else:
            p.write_text(body)
        f[name] = p
        return p

    text("empty.yml", "")
    text("latin1.yml", "# Gr\xfc\xdfe\nlatiter: 3\n".encode("latin-1"), "wb")
    text("dup.yml", "latiter: 3\nlat-warmup: 1\nlatiter: 5\n")
    sub = Path(TINY_SUB).read_text()
    text("sub_ende5.yml", sub.replace("decoder-arbitrary-ende-attn-all-subtransformer: [1]",
                                      "decoder-arbitrary-ende-attn-all-subtransformer: [5]"))
    text("sub_ende-3.yml", sub.replace("decoder-arbitrary-ende-attn-all-subtransformer: [1]",
                                       "decoder-arbitrary-ende-attn-all-subtransformer: [-3]"))
    text("sub_negdim.yml", sub.replace("encoder-embed-dim-subtransformer: 32", "encoder-embed-dim-subtransformer: -32"))
    (t / "empty_data").mkdir()
    nodict = t / "nodict_data"
    nodict.mkdir()
    (nodict / "train.de-en.de.bin").write_bytes(b"")
    text("save_dir_file", "not a directory\n")
    damaged = t / "damaged_data"  # dictionaries, but an index file that is not one
    damaged.mkdir()
    for name in ("dict.de.txt", "dict.en.txt"):
        (damaged / name).write_text("hallo 5\n")
    for lang in ("de", "en"):
        (damaged / f"train.de-en.{lang}.idx").write_bytes(b"garbage\n")
        (damaged / f"train.de-en.{lang}.bin").write_bytes(b"x")
    (t / "csv_dir").mkdir()
    text("results.jsonl", "not json\n{\"key\": \"abc\"\n")
    return t, f


def _no_valid(data: str, dest: Path) -> Path:
    """The demo data without its valid split (the other files linked)."""
    dest.mkdir()
    for name in os.listdir(data):
        if not name.startswith("valid."):
            os.symlink(os.path.join(data, name), dest / name)
    return dest


def _truncated(src: str, dest: Path) -> Path:
    data = Path(src).read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


# ---- no fairseq: latency_dataset.py ---------------------------------------------------------------------------------
LAT_CASES = [
    ("non-UTF-8 YAML", lambda t, f: [f"--configs={f['latin1.yml']}"], "not UTF-8"),
    ("duplicate YAML key", lambda t, f: [f"--configs={f['dup.yml']}"], "'latiter' given twice"),
    ("latiter 0", lambda t, f: [f"--configs={TINY_LAT}", "--latiter", "0"], "--latiter"),
    ("lat-src-len 0", lambda t, f: [f"--configs={TINY_LAT}", "--lat-src-len", "0"], "--lat-src-len"),
    ("lat-dataset-size 0", lambda t, f: [f"--configs={TINY_LAT}", "--lat-dataset-size", "0"], "--lat-dataset-size"),
    ("lat-dataset-size -3", lambda t, f: [f"--configs={TINY_LAT}", "--lat-dataset-size=-3"], "--lat-dataset-size"),
    ("lat-dataset-path a directory", lambda t, f: [f"--configs={TINY_LAT}", "--lat-dataset-path", t / "csv_dir"],
     "is a directory"),
    ("collect with no usable line", lambda t, f: [f"--configs={TINY_LAT}", "--lat-dataset-size", "2",
                                                  "--lat-dataset-path", t / "collected.csv",
                                                  "--collect", f["results.jsonl"]], "no usable result line"),
]


@pytest.mark.parametrize("what,argv,needle", LAT_CASES, ids=[c[0] for c in LAT_CASES])
def test_latency_dataset_bad_input_is_one_line(inputs, tmp_path, what, argv, needle):
    t, f = inputs
    work = tmp_path / "work"
    work.mkdir()
    p = run("latency_dataset.py", *argv(t, f), cwd=work)
    one_line_error(p, needle)
    assert os.listdir(work) == [] and not (t / "collected.csv").exists()
    assert not [n for n in os.listdir(t) if n.endswith(".lock")]


def test_duplicate_key_names_key_and_file(inputs):
    from hat.config import load_yaml
    from hat.errors import ConfigError

    t, f = inputs
    with pytest.raises(ConfigError, match=r"dup\.yml line 3: key 'latiter' given twice \(first on line 1\)"):
        load_yaml(str(f["dup.yml"]))
    (t / "dup2.yml").write_text("lat_warmup: 1\nlat-warmup: 2\n")
    with pytest.raises(ConfigError, match="given twice"):
        load_yaml(str(t / "dup2.yml"))


# ---- fairseq stages: train.py, generate.py, evo_search.py ------------------------------------------------------------
def _fairseq_cases(t, f, data):
    nov = _no_valid(data, t / "novalid_data") if not (t / "novalid_data").exists() else t / "novalid_data"
    trunc = _truncated(SHIPPED, t / "truncated.pt") if not (t / "truncated.pt").exists() else t / "truncated.pt"
    last = t / "resume_dir"
    if not last.exists():
        last.mkdir()
        _truncated(SHIPPED, last / "checkpoint_last.pt")
    sp = [f"--configs={TINY_SPACE}"]
    evo = [f"--configs={TINY_SPACE}", f"--evo-configs={TINY_EVO}", "--restore-file", SHIPPED, "--ckpt-path",
           os.path.join(ROOT, "latency_dataset", "predictors", "demo.de-en_onnxruntime.pt"), "--write-config-path",
           t / "evo_out" / "best.yml", "--cpu"]
    demo_space = os.path.join(ROOT, "configs", "demo.de-en", "supertransformer", "space0.yml")
    evo_demo = [f"--configs={demo_space}"] + evo[1:]
    return [
        ("train.py", "empty YAML", [f"--configs={f['empty.yml']}"], "no model"),
        ("train.py", "SubTransformer YAML without --sub-configs", [f"--configs={DEMO_SUB}", "--data", data], None),
        ("train.py", "non-UTF-8 YAML", [f"--configs={f['latin1.yml']}"], "not UTF-8"),
        ("train.py", "empty data dir", sp + ["--data", t / "empty_data"], "no fairseq dictionary"),
        ("train.py", "data dir without dictionaries", sp + ["--data", t / "nodict_data"], "no fairseq dictionary"),
        ("train.py", "missing data dir", sp + ["--data", t / "nowhere"], "not found"),
        ("train.py", "damaged index file", sp + ["--data", t / "damaged_data", "--save-dir", t / "never_made"],
         "not a fairseq index file"),
        ("train.py", "missing restore-file", sp + ["--data", data, "--restore-file", t / "nowhere.pt", "--save-dir",
                                                  t / "never_made"], "not found"),
        ("train.py", "truncated restore-file", sp + ["--data", data, "--restore-file", trunc, "--save-dir",
                                                    t / "never_made"], "truncated or corrupt"),
        ("train.py", "truncated checkpoint_last.pt", sp + ["--data", data, "--save-dir", last],
         "truncated or corrupt"),
        ("train.py", "save-dir a file", sp + ["--data", data, "--save-dir", f["save_dir_file"]], "is a file"),
        ("train.py", "arbitrary-ende-attn 5", sp + ["--data", data, f"--sub-configs={f['sub_ende5.yml']}"],
         "allowed: -1"),
        ("train.py", "arbitrary-ende-attn -3", sp + ["--data", data, f"--sub-configs={f['sub_ende-3.yml']}"],
         "allowed: -1"),
        ("train.py", "negative embed dim", sp + ["--data", data, f"--sub-configs={f['sub_negdim.yml']}"],
         "must be >= 1"),
        ("train.py", "latiter 0", sp + ["--data", data, "--latcpu", "--latiter", "0"], "--latiter"),
        ("generate.py", "empty data dir", sp + ["--data", t / "empty_data", "--path", SHIPPED],
         "no fairseq dictionary"),
        ("generate.py", "missing data dir", sp + ["--data", t / "nowhere", "--path", SHIPPED], "not found"),
        ("evo_search.py", "empty data dir", evo + ["--data", t / "empty_data"], None),
        ("evo_search.py", "population size 0", evo + ["--data", data, "--population-size", "0"],
         "--population-size"),
        ("evo_search.py", "parent size 0", evo + ["--data", data, "--parent-size", "0"], "--parent-size"),
        ("evo_search.py", "no valid split", evo_demo + ["--data", nov], "valid"),
    ]


@pytest.mark.slow
def test_fairseq_stages_bad_input_is_one_line(inputs, demo_data):
    t, f = inputs
    work = t / "work_fairseq"
    work.mkdir()
    cases = _fairseq_cases(t, f, demo_data)

    def go(case):
        script, what, argv, needle = case
        return case, run(script, *argv, cwd=work)

    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(go, cases))
    bad = []
    for (script, what, argv, needle), p in results:
        try:
            one_line_error(p, needle)
        except AssertionError as e:
            bad.append(f"{script} ({what}): {e}")
    assert not bad, "\n".join(bad)
    assert os.listdir(work) == []
    assert not (t / "never_made").exists() and not (t / "evo_out").exists()
    assert (t / "resume_dir" / "checkpoint_last.pt").stat().st_size == os.path.getsize(SHIPPED) // 2  # untouched


# ---- a full disk --------------------------------------------------------------------------------------------------
def test_full_disk_while_appending_a_row_leaves_whole_rows(tmp_path):
    from hat.latency.dataset import read_rows

    wrapper = tmp_path / "fault.py"
    wrapper.write_text(WRAPPER)
    csv = tmp_path / "lat.csv"
    work = tmp_path / "work"
    work.mkdir()
    p = run("latency_dataset.py", f"--configs={TINY_LAT}", "--lat-dataset-size", "3", "--lat-dataset-path", csv,
            cwd=work, wrapper=wrapper, env=_env(HAT_TEST_FAULT="enospc", HAT_TEST_TARGET=str(csv)))
    one_line_error(p, f"No space left on device: {csv}")
    text = csv.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2  # the header and the one row written before
    assert len(read_rows(str(csv))) == 1
    assert os.listdir(work) == [] and sorted(os.listdir(tmp_path)) == ["fault.py", "lat.csv", "work"]


@pytest.mark.slow
def test_full_disk_while_saving_the_predictor_writes_nothing(tmp_path):
    wrapper = tmp_path / "fault.py"
    wrapper.write_text(WRAPPER)
    csv = tmp_path / "lat.csv"
    shutil.copy(os.path.join(ROOT, "latency_dataset", "demo.de-en_onnxruntime_h200.csv"), csv)
    out = tmp_path / "out"
    yml = os.path.join(ROOT, "configs", "demo.de-en", "latency_predictor", "onnxruntime_h200.yml")
    p = run("latency_predictor.py", f"--configs={yml}",
            "--lat-dataset-path", csv, "--lat-dataset-size", "60", "--train-steps", "3", "--baseline", "none",
            "--no-progress", "--ckpt-path", out / "p.pt", "--space-configs",
            os.path.join(ROOT, "configs", "demo.de-en", "latency_dataset", "onnxruntime.yml"), cwd=tmp_path,
            wrapper=wrapper,
            env=_env(HAT_TEST_FAULT="fsize", HAT_TEST_FSIZE="20000"))
    one_line_error(p, str(out / "p.pt"))
    assert not out.exists() or os.listdir(out) == []


def test_an_environment_oserror_is_one_line(capsys):
    import errno

    from hat.cli import run as cli_run

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/state.json")

    with pytest.raises(SystemExit) as e:
        cli_run(full)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device: /x/state.json") and len(err.splitlines()) == 1


# ---- two writers, an interrupt -----------------------------------------------------------------------------------
def _wait_for(cond, timeout, what, proc=None):
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the run ended first (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


@contextlib.contextmanager
def _killed_on_exit(proc):
    """The run is killed (and reaped) if it is still alive when the block ends, passed or failed."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_sigint_leaves_no_temp_files(tmp_path):
    from hat.latency.dataset import lock_path, read_rows

    csv = tmp_path / "lat.csv"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    argv = [f"--configs={TINY_LAT}", "--latency-backend", "onnxruntime", "--lat-threads", "1", "--lat-dataset-size",
            "200", "--latiter", "20", "--lat-dataset-path", csv]
    env = _env(TMPDIR=str(tmp))
    first = subprocess.Popen([PY, os.path.join(ROOT, "latency_dataset.py"), *map(str, argv)], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    with _killed_on_exit(first):
        _wait_for(lambda: csv.exists() and len(csv.read_text().splitlines()) >= 2, 240, "a first row", first)
        _wait_for(lambda: any(n.startswith("hat-lat-ort-") for n in os.listdir(tmp)), 60, "an export", first)
        assert os.path.exists(lock_path(str(csv)))
        second = run("latency_dataset.py", *argv, cwd=work, env=env)
        line = one_line_error(second, str(csv))
        assert "another run" in line and f"pid {first.pid}" in line
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert first.returncode == 130, first.stderr.read()[-2000:]
    assert os.listdir(tmp) == []  # the temporary export directory is gone
    assert not os.path.exists(lock_path(str(csv)))
    keys = [r["key"] for r in read_rows(str(csv))]
    assert keys and len(keys) == len(set(keys))
    assert os.listdir(work) == []


def test_writers_of_one_process_share_the_lock_and_it_goes_with_them(tmp_path):
    from hat.latency.dataset import DatasetWriter, lock_path

    path = str(tmp_path / "lat.csv")
    a = DatasetWriter(path)
    b = DatasetWriter(path)  # the same process (tests, a stage calling another): not a concurrent run
    assert os.path.exists(lock_path(path))
    a.close()
    assert os.path.exists(lock_path(path))
    b.close()
    assert not os.path.exists(lock_path(path))


def test_a_locked_dataset_is_refused_in_one_line(tmp_path):
    """flock held by another process (a child holding the lock file open)."""
    from hat.errors import ConfigError
    from hat.latency.dataset import DatasetWriter, lock_path

    path = str(tmp_path / "lat.csv")
    lock = lock_path(path)
    holder = subprocess.Popen([PY, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242\\n'); print('locked', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"lat\.csv is being written by another run \(pid 4242"):
            DatasetWriter(path)
    finally:
        holder.kill()
        holder.wait()
    DatasetWriter(path).close()  # free again


# ---- smaller ones ---------------------------------------------------------------------------------------------------
def test_demo_reruns_a_stage_whose_output_is_gone(tmp_path, capsys):
    from hat.pipeline.runner import Runner

    out = tmp_path / "searched.yml"
    calls = []

    def stage():
        calls.append(1)
        out.write_text("x: 1\n")
        return {"config": str(out)}

    r = Runner(tmp_path / "stages")
    r.stage("search", "search", stage)
    r.stage("search", "search", stage)
    assert len(calls) == 1 and r.done("search")
    out.unlink()
    assert not r.done("search")
    r.stage("search", "search", stage)
    assert len(calls) == 2 and "which is gone: running it again" in capsys.readouterr().out
    data = tmp_path / "lat.csv"
    r.stage("data", "data", lambda: data.write_text("k\n") and None, outputs=[data])
    data.unlink()
    assert not r.done("data")


def test_a_train_checkpoint_is_not_a_predictor_in_plain_words():
    from hat.errors import CheckpointError
    from hat.predictor import LatencyPredictor

    with pytest.raises(CheckpointError) as e:
        LatencyPredictor.load(SHIPPED)
    msg = str(e.value)
    assert "\x1b" not in msg and "\n" not in msg and "not a latency predictor checkpoint" in msg


def test_subconfig_values_outside_hats_genes_are_refused():
    from hat.errors import ConfigError
    from hat.space import SearchSpace
    from hat.config import load_yaml

    cfg = SearchSpace.from_dict(load_yaml(TINY_SPACE)).largest()
    for bad in ({"decoder_arbitrary_ende_attn": (-3, -1)}, {"decoder_arbitrary_ende_attn": (5, -1)},
                {"decoder_arbitrary_ende_attn": (0, -1)}, {"encoder_embed_dim": -64}, {"qkv_dim": 0},
                {"decoder_ffn_embed_dim": (128, -1)}):
        with pytest.raises(ConfigError):
            cfg.replace(**bad)


@pytest.mark.slow
def test_sigint_during_an_export_leaves_no_temp_dir(tmp_path):
    """An interrupt while the first SubTransformer is exported (before any row): the temporary dir goes too."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.Popen([PY, os.path.join(ROOT, "latency_dataset.py"), f"--configs={TINY_LAT}", "--latency-backend",
                          "onnxruntime", "--lat-dataset-size", "50", "--lat-dataset-path", str(tmp_path / "lat.csv")],
                         cwd=tmp_path, env=_env(TMPDIR=str(tmp)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    with _killed_on_exit(p):
        _wait_for(lambda: any(n.startswith("hat-lat-ort-") for n in os.listdir(tmp)), 120, "an export", p)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
    assert p.returncode == 130 and os.listdir(tmp) == []
