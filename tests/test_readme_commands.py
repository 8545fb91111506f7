"""Every command of the RK3588 fork's README runs verbatim from the repository root (issue 13).

The command list is extracted from the fork's README, ``../shared/000_710932caded69dc1.txt``, when it is beside the
repository (as in CI), else read from its copy ``tests/fixtures/rk3588_readme_commands.txt`` (the two are checked to
be equal when both are there). The README's templates (``[task_name]``, ``[arch]``, ...) are expanded below, each
one explicitly: a new template in the README fails the test until it is given an expansion.

The walk runs every command in README order in a scratch copy of ``configs/`` and the top-level scripts (the
repository is never written to), as a user of this machine would: no WMT or IWSLT data, no network, no board. One
stand-in: HAT's WMT'14 En-De SuperTransformer is served over real HTTP on 127.0.0.1 (``HAT_DATA_URL_BASE``): the
shipped demo SuperTransformer, its search space narrowed to small SubTransformers so that exports and RKNN builds take
seconds, under HAT's file name. So that task's download, convert2onnx.py and convert2rknn.py (rknn-toolkit2) commands
do their work; every other download meets a closed port. A command passes when it exits 0 having done what its flags
ask, or exits 2 with ONE stderr line that says what is missing and names the command that gets it. It fails on a file
the README names that is not in the repository, a traceback, or a flag that changes nothing.
"""
import contextlib
import functools
import glob
import hashlib
import http.server
import importlib
import io
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import traceback
import types

import pytest

from conftest import FIXTURES, ROOT

pytest.importorskip("fairseq")
torch = pytest.importorskip("torch")

FORK_README = os.path.join(ROOT, "..", "shared", "000_710932caded69dc1.txt")
COPY = os.path.join(FIXTURES, "rk3588_readme_commands.txt")

# task -> (short name, ONNX name of its convert_onnx/super.yml, arch, SuperTransformer YAML)
TASKS = {
    "wmt14.en-de": ("wmt14ende", "wmt14_en_de", "transformersuper_wmt_en_de", "space0"),
    "wmt14.en-fr": ("wmt14enfr", "wmt14_en_fr", "transformersuper_wmt_en_fr", "space0"),
    "wmt19.en-de": ("wmt19ende", "wmt19_en_de", "transformersuper_wmt_en_de", "space0"),
    "iwslt14.de-en": ("iwslt14deen", "iwslt14_de_en", "transformersuper_iwslt_de_en", "space1"),
}
SERVED_TASK = "wmt14.en-de"  # the one task whose SuperTransformer the stand-in mirror serves


def extract_commands(text):
    """The README's shell commands (```sh blocks; a trailing backslash joins lines), in order, each once."""
    out = []
    for block in re.findall(r"```(?:sh)?\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = " ".join(line.split())
            if line.startswith(("python", "bash")) and line not in out:
                out.append(line)
    return out


def readme_commands():
    if os.path.isfile(FORK_README):
        with open(FORK_README, encoding="utf-8") as f:
            return extract_commands(f.read())
    with open(COPY, encoding="utf-8") as f:
        return [l for l in f.read().splitlines() if l.strip() and not l.startswith("#")]


def _files(task, folder, skip=()):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", task, folder, "*.yml"))
                  if os.path.basename(p) not in skip)


def _archs():
    """(task, architecture file, qkv suffix) of the README's searched SubTransformers."""
    return [(t, f"configs/{t}/subtransformer/{s}_{v}@200ms.yml", q) for t, (s, *_ ) in TASKS.items()
            for v, q in (("npu", ""), ("npu_test0", "64"))]


def _sub_key(arch, qkv):
    from hat.config import load_yaml
    from hat.space import SubConfig

    d = load_yaml(os.path.join(ROOT, arch))
    if qkv:
        d["qkv-dim-subtransformer"] = int(qkv)
    return SubConfig.from_hat_dict({k: v for k, v in d.items() if k.endswith("-subtransformer")}).key()


# each template line of the README -> the commands it stands for here (empty: the README's concrete lines are those)
TEMPLATES = {
    "bash configs/[task_name]/get_preprocessed.sh": lambda: [],
    "python train.py --configs=configs/[dataset_name]/supertransformer/space0.yml": lambda: [],
    "python download_model.py --model-name=[model_name]": lambda: [],
    "python convert2onnx.py --configs=configs/[task_name]/convert_onnx/[search_space].yml [--enc|--dec]": lambda: [],
    "python convert2rknn.py --onnx-name=[model_name] [--enc|--dec]": lambda: [],
    # HAT's hardware (the README's npu lines are concrete)
    "python latency_dataset.py --configs=configs/[task_name]/latency_dataset/[hardware_name].yml": lambda: [
        f"python latency_dataset.py --configs={p}" for t in TASKS for p in _files(t, "latency_dataset", ("npu.yml",))],
    # HAT's hardware predictors train on HAT's published 2,000-row datasets: tests/test_predictor.py
    "python latency_predictor.py --configs=configs/[task_name]/latency_predictor/[hardware_name].yml": lambda: [],
    "python evo_search.py --configs=[supertransformer_config_file].yml --evo-configs=[evo_settings].yml": lambda: [
        f"python evo_search.py --configs=configs/{t}/supertransformer/{TASKS[t][3]}.yml --evo-configs={p}"
        for t in TASKS for p in _files(t, "evo_search", (f"{TASKS[t][0]}_npu.yml",))],
    "python train.py --configs=[subtransformer_architecture].yml --sub-configs=configs/[task_name]/subtransformer/"
    "common[qkv_size].yml": lambda: [],
    # verbatim, doubled '=' included
    "python convert2onnx.py --configs=[subtransformer_architecture].yml --sub-configs==configs/[task_name]/"
    "convert_onnx/common[qkv_size].yml": lambda: [
        f"python convert2onnx.py --configs={a} --sub-configs==configs/{t}/convert_onnx/common{q}.yml"
        for t, a, q in _archs()],
    "python convert2rknn.py --onnx-name=[model_name]": lambda: [
        f"python convert2rknn.py --onnx-name=sub-{_sub_key(a, q)}" for t, a, q in _archs()],
    "python train.py --rknn-name=[model_name] --latnpu -a=[arch]": lambda: [
        f"python train.py --rknn-name={onnx} --latnpu -a={arch}" for t, (s, onnx, arch, sp) in TASKS.items()],
}


def walk_list():
    out = []
    for line in readme_commands():
        for cmd in (TEMPLATES[line]() if "[" in line else [line]):
            if cmd not in out:
                out.append(cmd)
    return out


# ---- the stand-in world ---------------------------------------------------------------------------------------------
def standin_super(path):
    """The shipped demo SuperTransformer (train.py's own checkpoint) with its search space narrowed, so that its
    largest SubTransformer (what convert2onnx.py exports without a SubTransformer config) is small."""
    state = torch.load(os.path.join(ROOT, "pretrained", "demo.de-en", "space0.pt"), map_location="cpu",
                       weights_only=False)
    a = state["cfg"]["model"]
    for side in ("encoder", "decoder"):
        setattr(a, f"{side}_embed_choice", [128])
        setattr(a, f"{side}_ffn_embed_dim_choice", [256])
        setattr(a, f"{side}_self_attention_heads_choice", [2])
    a.encoder_layer_num_choice, a.decoder_layer_num_choice = [2], [1]
    a.decoder_ende_attention_heads_choice, a.decoder_arbitrary_ende_attn_choice, a.qkv_dim_choice = [2], [-1], [64]
    torch.save(state, path)


@contextlib.contextmanager
def http_mirror(folder):
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                                     {"log_message": lambda *a: None}), directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def run(cmd):
    """(exit code, stdout, stderr) of a README command run from the current directory: ``bash`` as a subprocess,
    ``python X.py`` in this process through the script's own entry (hat.cli.run of its stage's main), which is what
    the 3-line shim does. A traceback is returned as exit code 'traceback' with the traceback in stderr."""
    tokens = shlex.split(cmd)
    if tokens[0] == "bash":
        env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=ROOT)
        r = subprocess.run(tokens, capture_output=True, text=True, timeout=120, env=env)
        return r.returncode, r.stdout, r.stderr
    from hat.cli import run as cli_run

    stage = importlib.import_module("hat.stages." + os.path.basename(tokens[1])[: -len(".py")])
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        # rknn-toolkit2's logger keeps the stderr it first saw; in a long pytest run that is an earlier test's
        # capture, closed by now, and logging would print its own "--- Logging error ---" traceback
        for h in logging.getLogger("rknnLogger").handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.stream = sys.stderr  # not setStream(): it flushes the old, closed stream first
        try:
            cli_run(lambda: stage.main(tokens[2:]))
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: BLE001  (what a user would see as a traceback)
            code = "traceback"
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


REMEDY = re.compile(r"bash configs/\S+/get_preprocessed\.sh|python [a-z_0-9]+\.py|network connection|board")


def expected_error(cmd):
    """What the one error line must say for a command that cannot do its work here (a regex), or None when the
    command must succeed."""
    t = shlex.split(cmd)
    script, args = os.path.basename(t[1]) if t[0] == "python" else t[1], t[2:]
    arg = dict(a.split("=", 1) for a in args if "=" in a)
    if t[0] == "bash":
        return r"downloading needs a network connection"
    if script == "download_model.py":
        return None if arg["--model-name"] == f"HAT_{TASKS[SERVED_TASK][0]}_super_space0" else "network connection"
    task = next((x for x in TASKS if f"configs/{x}/" in cmd), None)
    if script in ("train.py", "evo_search.py", "latency_dataset.py") and "--rknn-name" not in arg:
        from hat.config import load_yaml

        yml = [load_yaml(os.path.join(ROOT, arg[k])) for k in ("--configs", "--sub-configs") if k in arg]
        data = [y["data"] for y in yml if "data" in y][-1]
        data_task = next(x for x in TASKS if load_yaml(
            os.path.join(ROOT, "configs", x, "supertransformer", TASKS[x][3] + ".yml"))["data"] == data)
        return rf"{re.escape(data)}.*bash configs/{re.escape(data_task)}/get_preprocessed\.sh"
    if script == "latency_predictor.py":  # names the board's dataset; the how is latency_dataset/npu.yml's header
        return rf"latency dataset not found: latency_dataset/{TASKS[task][0]}_npu\.csv"
    if script == "convert2onnx.py" and "convert_onnx/super.yml" in cmd:
        s = TASKS[task]
        return None if task == SERVED_TASK else \
            rf"python download_model.py --model-name=HAT_{s[0]}_super_{s[3]}\b"
    if script == "convert2onnx.py":
        arch = arg["--configs"]
        common = os.path.basename(arg["--sub-configs"].lstrip("="))
        return (rf"checkpoints/{task}/subtransformer/{re.escape(os.path.basename(arch)[:-4])}/checkpoint_best\.pt.*"
                rf"python train\.py --configs={re.escape(arch)} --sub-configs=configs/{task}/subtransformer/"
                rf"{re.escape(common)}")
    name = arg.get("--onnx-name") or arg.get("--rknn-name")
    if script == "convert2rknn.py":
        task = next((x for x in TASKS if TASKS[x][1] == name), None)
        if task == SERVED_TASK:
            return None
        if task:
            return rf"python convert2onnx\.py --configs=configs/{task}/convert_onnx/super\.yml"
        t, a, q = next((t, a, q) for t, a, q in _archs() if f"sub-{_sub_key(a, q)}" == name)
        return (rf"python convert2onnx\.py --configs={re.escape(a)} "
                rf"--sub-configs=configs/{t}/convert_onnx/common{q}\.yml")
    if script == "train.py":  # --rknn-name NAME --latnpu
        return r"no NPU board here" if name == TASKS[SERVED_TASK][1] else \
            rf"python convert2rknn\.py --onnx-name={re.escape(name)}\b"
    raise AssertionError(f"no expectation for {cmd}")


def _inodes(folder):
    return {f: os.stat(os.path.join(folder, f)).st_ino for f in os.listdir(folder)} if os.path.isdir(folder) else {}


def _check_flags(cmd, before, after):
    """The files a successful export/build command (re)wrote must be exactly those its flags ask for."""
    t = shlex.split(cmd)
    script = os.path.basename(t[1])
    if script not in ("convert2onnx.py", "convert2rknn.py"):
        return
    name = TASKS[SERVED_TASK][1]
    ext = ".onnx" if script == "convert2onnx.py" else ".rk3588.fp16.rknn"
    wanted = {p for p in ("enc", "dec") if f"--{p}" in t} or {"enc", "dec"}
    for part in ("enc", "dec"):
        f = f"{name}_{part}{ext}"
        assert f in after, f"{cmd}: {f} not written"
        rewritten = before.get(f) != after[f]
        assert rewritten == (part in wanted), f"{cmd}: {f} {'rewritten' if rewritten else 'untouched'}"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A scratch copy of what the README's commands read (configs/, the top-level scripts), its working directory."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "configs"), repo / "configs")
    for script in glob.glob(os.path.join(ROOT, "*.py")):
        shutil.copy(script, repo)
    served = tmp_path / "mirror"
    served.mkdir()
    standin_super(served / f"HAT_{TASKS[SERVED_TASK][0]}_super_space0.pt")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HAT_MODEL_REGISTRY", os.path.join(ROOT, "hat", "model_registry.json"))
    return repo, served


def test_the_command_list_copy_matches_the_fork_readme():
    with open(COPY, encoding="utf-8") as f:
        copy = [l for l in f.read().splitlines() if l.strip() and not l.startswith("#")]
    assert len(copy) == 68 and copy[0] == "bash configs/[task_name]/get_preprocessed.sh"
    if os.path.isfile(FORK_README):
        assert readme_commands() == copy
    templates = [c for c in copy if "[" in c]
    assert sorted(templates) == sorted(TEMPLATES), "a README template has no expansion here (or one is stale)"


def test_every_file_the_readme_names_is_in_the_repository():
    named = set()
    for cmd in walk_list():
        for tok in shlex.split(cmd):
            named.update(m.lstrip("=") for m in re.findall(r"=?=?(configs/\S+\.(?:yml|sh))", tok))
    assert len(named) >= 60
    missing = sorted(p for p in named if not os.path.isfile(os.path.join(ROOT, p)))
    assert not missing, f"named by the README but not here: {missing}"


@pytest.mark.slow
def test_readme_commands_run_verbatim(world, monkeypatch):
    pytest.importorskip("rknn.api", reason="rknn-toolkit2 not installed (make install puts it in .venv)")
    repo, served = world
    dead = closed_port()
    results, problems = [], []
    with http_mirror(served) as mirror:
        for cmd in walk_list():
            mirrored = f"--model-name=HAT_{TASKS[SERVED_TASK][0]}_super_space0" in cmd
            monkeypatch.setenv("HAT_DATA_URL_BASE", mirror if mirrored else dead)
            before = _inodes("onnx")
            code, out, err = run(cmd)
            after = _inodes("onnx")
            lines = [l for l in err.splitlines() if l.strip()]
            want = expected_error(cmd)
            results.append((cmd, code, lines[-1] if lines else ""))
            if "Traceback" in err or code == "traceback":
                problems.append(f"{cmd}: traceback\n{err[-3000:]}")
            elif "config file not found" in err:
                problems.append(f"{cmd}: {lines[-1]}")
            elif want is None:
                if code != 0:
                    problems.append(f"{cmd}: exit {code}: {lines[-1:] or out[-500:]}")
                else:
                    _check_flags(cmd, before, after)
            elif code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
                problems.append(f"{cmd}: exit {code}, want exit 2 and one error line; stderr: {lines[-5:]}")
            elif not re.search(want, lines[0]) or not (REMEDY.search(lines[0]) or "latency_predictor.py" in cmd):
                problems.append(f"{cmd}: {lines[0]!r} does not match {want!r}")
            else:  # a command the line names must exist here: its config files and scripts
                for path in re.findall(r"(?:bash |--configs=)(configs/\S+?\.(?:sh|yml))\b", lines[0]):
                    if not os.path.isfile(path):
                        problems.append(f"{cmd}: its remedy names {path}, which is not here")
    assert not problems, "\n".join(problems)
    assert len(results) >= 90
    # what the stand-in mirror made possible was done: HAT's file downloaded, exported, built under the README's names
    name = TASKS[SERVED_TASK][1]
    with open(served / f"HAT_{TASKS[SERVED_TASK][0]}_super_space0.pt", "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(repo / "downloaded_models" / f"HAT_{TASKS[SERVED_TASK][0]}_super_space0.pt", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest
    for part in ("enc", "dec"):
        assert (repo / "onnx" / f"{name}_{part}.rk3588.fp16.rknn").stat().st_size > 0
    # the repository itself got nothing
    assert not os.path.exists(os.path.join(ROOT, "downloaded_models", f"HAT_{TASKS[SERVED_TASK][0]}_super_space0.pt"))

    # --rknn-name and -a on a (fake) board: the RKNN files are found under the README's name and timed, the arch
    # named in the result; a wrong arch is refused
    board = repo / "board"
    board.mkdir()
    for part in ("enc", "dec"):  # FakeRKNNLite runs ONNX in onnxruntime: the graphs stand in for the .rknn files
        shutil.copy(repo / "onnx" / f"{name}_{part}.onnx", board / f"{name}_{part}.rk3588.fp16.rknn")
        shutil.copy(repo / "onnx" / f"{name}_{part}.json", board / f"{name}_{part}.json")
    from test_board import FakeRKNNLite

    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FakeRKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    arch = TASKS[SERVED_TASK][2]
    code, out, err = run(f"python train.py --rknn-name=board/{name} --latnpu -a={arch} --latiter 3 --lat-warmup 1")
    assert code == 0, err
    assert re.search(rf"\| {name} \({arch}\): encoder .* \[measured:board\]", out), out
    assert any(c[0] == "inference" and c[1] == f"{name}_dec.rk3588.fp16.rknn" for c in FakeRKNNLite.calls)
    code, out, err = run(f"python train.py --rknn-name=board/{name} --latnpu -a=transformersuper_nonesuch")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nonesuch" in err


def test_latnpu_selects_the_npu_backend_and_conflicts_in_one_line(tmp_path, capsys):
    """latency_dataset.py's --latnpu is the backend choice the README means, not an ignored flag."""
    from hat.args import add_latency_args, backend_name, parse_args
    from hat.errors import ConfigError
    from hat.stages.latency_dataset import main

    npu = os.path.join(ROOT, "configs", "wmt14.en-de", "latency_dataset", "npu.yml")
    no_key = tmp_path / "npu_without_backend.yml"
    with open(npu) as f:
        text = f.read()
    no_key.write_text(text.replace("latency-backend: npu\n", ""))
    parse = lambda *argv: parse_args(list(argv), "latency_dataset.py", hooks=(add_latency_args,))
    assert backend_name(parse(f"--configs={no_key}", "--latnpu")) == "npu"
    with pytest.raises(ConfigError, match="choose a backend"):
        backend_name(parse(f"--configs={no_key}"))
    assert backend_name(parse(f"--configs={npu}", "--latnpu", "--latency-backend", "npu-adb")) == "npu-adb"
    for argv, msg in (
            ([f"--configs={npu}", "--latnpu", "--latency-backend", "onnxruntime"],
             "--latnpu asks for npu/npu-adb but latency-backend is onnxruntime"),
            ([f"--configs={no_key}", "--latnpu", "--latcpu"], "--latcpu and --latnpu name different hardware"),
            ([f"--configs={os.path.join(ROOT, 'configs', 'wmt14.en-de', 'latency_dataset', 'gpu_titanxp.yml')}",
              "--latnpu"], "--latgpu and --latnpu name different hardware")):
        with pytest.raises(SystemExit) as e:
            from hat.cli import run as cli_run

            cli_run(lambda: main(argv + ["--lat-vocab-size", "64", "--lat-dataset-path", str(tmp_path / "x.csv")]))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "x.csv").exists()
