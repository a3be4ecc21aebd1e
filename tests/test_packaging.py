"""The distribution, the set-up files and the documentation conventions."""

import ast
import importlib
import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import normlib

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ["normlib.functional", "normlib.reference", "normlib.nn", "normlib.spectral", "normlib.distributed",
                  "normlib.scaling", "normlib.kernels", "normlib.book.gan", "normlib.book.backward",
                  "normlib.book.quadratic", "normlib.book.invariance", "normlib.book.bench",
                  "normlib.book.seeds"]
CORE = [p for p in (ROOT / "normlib").rglob("*.py") if "book" not in p.relative_to(ROOT / "normlib").parts]


def test_version():
    assert normlib.__version__ == "0.1.0"


def test_citation_cff_is_valid():
    cffconvert = Path(sys.executable).parent / "cffconvert"
    result = subprocess.run([str(cffconvert), "--validate", "-i", str(ROOT / "CITATION.cff")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["cff-version"] == "1.2.0"


def test_wheel_contains_normlib_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("normlib-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"normlib", "normlib-0.1.0.dist-info"}, top_level
    assert "normlib/functional.py" in names
    metadata = zipfile.ZipFile(wheel).read("normlib-0.1.0.dist-info/METADATA").decode()
    required = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert required == ["Requires-Dist: torch>=2.1"], required


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make (\w+)\s", readme.split("## The two commands")[1].split("##")[0], re.M)
    assert commands == ["book", "test"]
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]


def test_makefile_pins_the_versions():
    makefile = (ROOT / "Makefile").read_text()
    assert '"torch==2.13.0"' in makefile
    assert '"jupyter-book>=1,<2"' in (ROOT / "pyproject.toml").read_text()


def test_environment_yml_installs_the_package_with_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[book,test]" in pip


def test_importing_normlib_imports_nothing_but_torch():
    """``import normlib`` loads no module that ``import torch`` does not load already. (torch
    itself imports numpy, and tqdm from torch.hub, when they are installed: the issue's check
    ``sorted({...} & {'tqdm', 'matplotlib', 'scipy', 'sklearn'})`` prints ['tqdm'] for ``import
    torch`` alone in an environment that has tqdm.)"""
    code = ("import sys, torch; before = set(sys.modules); import normlib; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "['normlib']", result.stdout
    lazy = "import sys, normlib, normlib.book.data, normlib.book.plot; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", lazy], check=True)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{node.module}.{a.name}" if node.module else a.name
                 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    return imported


def test_imports_flow_one_way():
    """The library never imports the book's workshop; the kernels import neither nn nor
    functional; functional never imports nn; nothing imports the chapters; the library's modules
    import nothing outside torch and the standard library at module level (scaling, loaded
    lazily, takes numpy and scikit-learn; the kernel modules Triton)."""
    assert CORE and not any(p.name in ("train.py", "plot.py") for p in CORE)
    third_party = {"numpy", "tqdm", "matplotlib", "scipy", "sklearn", "skimage"}
    for path in (ROOT / "normlib").rglob("*.py"):
        imported = _imports(path)
        assert not any("chapters" in name for name in imported), path
        if path not in CORE:
            continue
        assert not any(name.startswith("normlib.book") for name in imported), path
        if path.name != "scaling.py":
            assert not {name.split(".")[0] for name in imported} & third_party, path
        if path.name == "functional.py":
            assert not any(name.startswith("normlib.nn") for name in imported), path
        if "kernels" in path.parts:
            assert not any(name.startswith(("normlib.nn", "normlib.functional")) for name in imported), path


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_docstrings_name_their_chapter(module_name):
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or (inspect.isclass(obj) and issubclass(obj, Exception)):
            continue  # data tables and exceptions document themselves in the module docstring
        doc = inspect.getdoc(obj) or ""
        assert re.search(r"chapters/\d\d_\w+\.ipynb", doc), f"{module_name}.{name} does not name its chapter"


def test_data_readme_lists_the_recorded_checksums():
    from normlib.book.data import SHA256

    readme = (ROOT / "data" / "README.md").read_text()
    for name, digest in SHA256.items():
        assert name in readme and digest in readme
        assert (ROOT / "data" / name).stat().st_size == int(re.search(rf"`{re.escape(name)}`.*\| (\d+) \|", readme).group(1))


def test_repository_buttons_only_for_a_public_remote():
    sys.path.insert(0, str(ROOT / "_ext"))
    from repository_buttons import public_repository

    assert public_repository("https://github.com/owner/book.git\n") == "https://github.com/owner/book"
    assert public_repository("git@gitlab.com:owner/book.git") == "https://gitlab.com/owner/book"
    for private in ("", "/work/main", "file:///srv/book.git", "https://git.example.org/owner/book"):
        assert public_repository(private) is None, private
