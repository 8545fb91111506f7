"""Packaging: the wheel holds every module and data file of hat/ and the metadata setup.py declares; every third-party
package hat/ imports is declared (setup.py or its INSTALLED_APART); setup.py agrees with the pins CI installs
(requirements.txt, tools/install.sh) and with the Python the suite runs on."""
import ast
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def setup_constants():
    """The module-level constants of setup.py (read, not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


S = setup_constants()


def declared():
    """canonical name -> Requirement, for install_requires and every extra."""
    reqs = list(S["INSTALL_REQUIRES"]) + [r for extra in S["EXTRAS_REQUIRE"].values() for r in extra]
    out = {}
    for text in reqs:
        r = Requirement(text)
        out[canonicalize_name(r.name)] = r
    return out


def requirements_txt():
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            out[canonicalize_name(r.name)] = r
    return out


def install_sh_pins():
    """name==version pins that tools/install.sh passes to pip (torch, fairseq-fixed, rknn-toolkit2)."""
    text = (ROOT / "tools" / "install.sh").read_text()
    return {canonicalize_name(n): v for n, v in re.findall(r"install[^\n]*?\s([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", text)}


def tracked(under: str):
    """Files git knows (tracked or new and not ignored) under ``under``, without caches."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", under], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(ROOT)) for p in (ROOT / under).rglob("*") if p.is_file()]
    return sorted(f for f in out if "__pycache__" not in f and not f.endswith(".pyc") and (ROOT / f).is_file())


def third_party_imports():
    """top-level module -> the hat/ files importing it (module-level or inside functions), stdlib and hat left out."""
    out = {}
    for f in tracked("hat"):
        if not f.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top != "hat" and top not in sys.stdlib_module_names:
                    out.setdefault(top, set()).add(f)
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the files git knows (so nothing is written into the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for f in ["setup.py"] + tracked("hat") + [f for f in ("MANIFEST.in",) if (ROOT / f).is_file()]:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((ROOT / f).read_bytes())
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp / "dist").glob("hat_rknn-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(wheel.namelist())
    files = tracked("hat")
    assert any(not f.endswith(".py") for f in files)  # hat/model_registry.json at least
    missing = [f for f in files if f not in names]
    assert not missing, f"not in the wheel (a package without __init__.py, or data not in package_data): {missing}"


def test_wheel_metadata_is_what_setup_py_declares(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    lines = wheel.read(meta).decode().splitlines()
    (python,) = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("Requires-Python: ")]
    assert SpecifierSet(python) == SpecifierSet(S["PYTHON_REQUIRES"])
    got = {str(Requirement(ln.split(": ", 1)[1])) for ln in lines if ln.startswith("Requires-Dist: ")}
    want = {str(Requirement(r)) for r in S["INSTALL_REQUIRES"]}
    want |= {str(Requirement(f'{r}; extra == "{e}"')) for e, rs in S["EXTRAS_REQUIRE"].items() for r in rs}
    assert got == want
    assert {"dev", "npu"} <= set(S["EXTRAS_REQUIRE"])


def test_every_third_party_import_of_hat_is_declared():
    names = set(declared()) | {canonicalize_name(Requirement(v).name) for v in S["INSTALLED_APART"].values()}
    dists = packages_distributions()
    undeclared = {}
    for mod, files in third_party_imports().items():
        if mod in S["INSTALLED_APART"]:
            continue
        candidates = {canonicalize_name(d) for d in dists.get(mod, [])} or {canonicalize_name(mod)}
        if not candidates & names:
            undeclared[mod] = sorted(files)
    assert not undeclared, f"imported by hat/ but not declared in setup.py: {undeclared}"


# requirements.txt lines that no code needs (kept by CI's install): nothing of hat/ imports them
NOT_IMPORTED = {"onnxscript": "torch.onnx's dynamo exporter; hat exports with dynamo=False"}


def test_setup_py_agrees_with_the_pins_ci_installs():
    dec, req, sh = declared(), requirements_txt(), install_sh_pins()
    problems = []
    for name, r in req.items():  # what CI installs is declared, and its pins satisfy setup.py's ranges
        if name not in dec:
            if name not in NOT_IMPORTED:
                problems.append(f"{name}: in requirements.txt, not in setup.py")
            continue
        pinned = [s.version for s in r.specifier if s.operator == "=="]
        if pinned and not dec[name].specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{name}: requirements.txt pins {pinned[0]}, setup.py says {dec[name].specifier}")
    for name, r in dec.items():  # what pip would install for hat-rknn[dev,npu] is what CI installs
        if name in req or name in sh:
            if name in sh and not r.specifier.contains(sh[name], prereleases=True):
                problems.append(f"{name}: tools/install.sh pins {sh[name]}, setup.py says {r.specifier}")
        elif not any(name in [canonicalize_name(Requirement(x).name) for x in S["EXTRAS_REQUIRE"][e]]
                     for e in S["EXTRAS_REQUIRE"] if e not in ("dev", "npu")):
            problems.append(f"{name}: declared in setup.py, but neither requirements.txt nor tools/install.sh "
                            f"installs it")
    for v in S["INSTALLED_APART"].values():  # the packages installed apart: the same version as install.sh's
        r = Requirement(v)
        name = canonicalize_name(r.name)
        if name in sh and not r.specifier.contains(sh[name], prereleases=True):
            problems.append(f"{name}: tools/install.sh pins {sh[name]}, setup.py INSTALLED_APART says {r.specifier}")
    assert not problems, "\n".join(problems)


def test_python_requires_is_the_python_tested():
    spec = SpecifierSet(S["PYTHON_REQUIRES"])
    here = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert spec.contains(here), f"the suite runs on Python {here}; setup.py says python_requires {spec}"
    m = re.search(r"PY=\$\{PYTHON:-python(\d+\.\d+)\}", (ROOT / "tools" / "install.sh").read_text())
    assert m and spec.contains(m.group(1) + ".0"), "tools/install.sh creates .venv with another Python"
