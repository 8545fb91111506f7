"""The layout the README describes, checked on the tree: an import graph under hat/ without circles (function-local
imports included), no library importing a stage, fairseq only in the plugin layer, a torch/numpy-only core, top-level
scripts that are shims of their stage, and no second copy of the ground-floor helpers."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAT = ROOT / "hat"
SCRIPTS = ("train.py", "evo_search.py", "latency_dataset.py", "latency_predictor.py", "convert2onnx.py",
           "convert2rknn.py", "generate.py", "download_model.py", "score.py")
CORE = ("hat.space", "hat.modules", "hat.models", "hat.search", "hat.memory")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_main_guard(node) -> bool:
    t = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__")


def imports_of(path: Path):
    """(imported module, is the import inside an ``if __name__ == "__main__":`` block) for every import statement,
    module-level or function-local."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []

    def visit(node, in_main):
        for child in ast.iter_child_nodes(node):
            main = in_main or _is_main_guard(child)
            if isinstance(child, ast.Import):
                out.extend((a.name, main) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module
                out.append((mod, main))
                for a in child.names:  # `from hat.export import decode` imports the submodule
                    out.append((f"{mod}.{a.name}", main))
            visit(child, main)

    visit(tree, False)
    return out


def hat_modules():
    return {module_name(p): p for p in HAT.rglob("*.py")}


def resolve(mod: str, known) -> list:
    """The hat modules an import statement runs: the module (or the package holding a name) and its parents."""
    if not mod or not (mod == "hat" or mod.startswith("hat.")):
        return []
    while mod not in known and "." in mod:
        mod = mod.rsplit(".", 1)[0]
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in known]


def graph(include_main=False):
    known = hat_modules()
    g = {m: set() for m in known}
    for m, p in known.items():
        for mod, in_main in imports_of(p):
            if in_main and not include_main:
                continue
            for dep in resolve(mod, known):
                if dep != m and not m.startswith(dep + "."):  # a package's own __init__ is not a cycle
                    g[m].add(dep)
    return g


def cycles(g):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_under_hat():
    assert cycles(graph()) == []


def test_no_library_imports_a_stage():
    bad = [(m, d) for m, deps in graph().items() for d in deps
           if d.startswith("hat.stages") and not m.startswith("hat.stages")]
    assert bad == []
    # nor does a stage import another stage: shared plumbing lives in hat.args / the plugin / the libraries
    bad = [(m, d) for m, deps in graph().items() for d in deps
           if m.startswith("hat.stages.") and d.startswith("hat.stages.")]
    assert bad == []


def test_a_python_m_entry_point_only_hands_over_to_its_stage():
    """``python -m hat.demo`` & co.: a ``__main__`` block may import a stage; that block runs the stage and nothing
    else (so such a module stays a library for every importer)."""
    for m, p in hat_modules().items():
        if m.startswith("hat.stages"):
            continue
        for mod, in_main in imports_of(p):
            if mod and mod.startswith("hat.stages"):
                assert in_main, f"{m} imports {mod} outside its __main__ block"


def test_fairseq_only_in_the_plugin_layer():
    for m, p in hat_modules().items():
        if m.startswith("hat.fairseq_plugin"):
            continue
        for mod, _ in imports_of(p):
            assert not (mod or "").split(".")[0] in ("fairseq", "fairseq_cli"), f"{m} imports {mod}"


def test_core_imports_only_torch_numpy_and_core():
    allowed_ext = {"torch", "numpy", "__future__"}
    allowed_hat = set(CORE) | {"hat.errors", "hat.io", "hat.vocab"}
    for m, p in hat_modules().items():
        if not any(m == c or m.startswith(c + ".") for c in CORE):
            continue
        for mod, _ in imports_of(p):
            top = (mod or "").split(".")[0]
            if top == "hat":
                assert any(mod == a or mod.startswith(a + ".") for a in allowed_hat), f"{m} imports {mod}"
            else:
                import sys

                assert top in allowed_ext or top in sys.stdlib_module_names, f"{m} imports {mod}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_top_level_scripts_are_shims(script):
    src = (ROOT / script).read_text()
    tree = ast.parse(src)
    stage = script[:-3]
    code = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    imported = {(n.module, a.name) for n in code if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imported == {("hat.cli", "run"), (f"hat.stages.{stage}", "main")}
    assert len(code) == 3, f"{script}: a shim imports run and main and calls run(main)"
    assert (HAT / "stages" / script).is_file()


def test_every_stage_module_has_its_script():
    entry = {"demo", "paper_table", "checkpoint"}  # python -m hat.demo / hat.paper_table / hat.checkpoint
    for p in (HAT / "stages").glob("*.py"):
        if p.name == "__init__.py":
            continue
        assert p.name in SCRIPTS or p.stem in entry, p.name
    for name in entry:
        src = (HAT / f"{name}.py").read_text()
        assert f"from hat.stages.{name} import main" in src


def test_ground_floor_helpers_have_one_definition():
    """atomic writes, sha256, special token ids and the arbitrary-attention layer count: one definition each."""
    found = {"os.replace": [], "hashlib.sha256(": [], "token ids": [], "max(a, 0) + 1": []}
    for p in sorted(HAT.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py")) + [ROOT / s for s in SCRIPTS]:
        rel = str(p.relative_to(ROOT))
        text = p.read_text()
        if "os.replace(" in re.sub(r"#.*", "", text):
            found["os.replace"].append(rel)
        if re.search(r"hashlib\.sha256\(\)\s*\n", text):
            found["hashlib.sha256("].append(rel)
        if re.search(r"^\s*(BOS|PAD|EOS|UNK)\b[^=\n]*=\s*[0-9]", text, re.M):
            found["token ids"].append(rel)
        if re.search(r"max\([^()]*,\s*0\)\s*\+\s*1", text):
            found["max(a, 0) + 1"].append(rel)
    # hat/download.py keeps a named .part file across runs so that an interrupted download resumes
    assert found["os.replace"] == ["hat/download.py", "hat/io.py"]
    assert found["hashlib.sha256("] == ["hat/io.py"]
    assert found["token ids"] == ["hat/vocab.py"]
    assert found["max(a, 0) + 1"] == ["hat/space.py"]


def test_matplotlib_is_set_up_in_one_place():
    users = [str(p.relative_to(ROOT)) for p in HAT.rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert users == ["hat/plotting.py"]


@pytest.mark.slow
def test_latency_stages_run_without_fairseq(tmp_path):
    """latency_dataset.py and latency_predictor.py never import fairseq (their parser is hat.args')."""
    import subprocess
    import sys

    code = f"""
import sys
from hat.stages.latency_dataset import main as dataset
from hat.stages.latency_predictor import main as predictor
assert dataset(["--configs=configs/demo.de-en/latency_dataset/cpu.yml", "--latency-backend", "cpu",
                "--lat-dataset-size", "2", "--latiter", "2", "--lat-warmup", "0", "--lat-vocab-size", "64",
                "--lat-dataset-path", "{tmp_path}/lat.csv"]) == 0
assert predictor(["--configs=configs/demo.de-en/latency_predictor/onnxruntime.yml", "--train-steps", "5",
                  "--baseline", "none", "--ensemble", "1", "--no-progress", "--ckpt-path", "{tmp_path}/p.pt"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("fairseq", "fairseq_cli"))
assert not loaded, loaded[:5]
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]
    assert (tmp_path / "lat.csv").read_text().count("\n") == 3  # header + 2 measured rows
