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
PUBLIC_MODULES = ["normlib.functional", "normlib.nn", "normlib.spectral", "normlib.gan", "normlib.scaling", "normlib.backward",
                  "normlib.quadratic", "normlib.invariance", "normlib.kernels", "normlib.bench"]


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


def test_importing_normlib_does_not_import_matplotlib():
    code = "import sys, normlib, normlib.data, normlib.plot; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_imports_flow_one_way():
    """functional never imports nn; nothing in normlib imports the chapters."""
    for path in (ROOT / "normlib").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {f"{node.module}.{a.name}" if node.module else a.name
                     for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
        assert not any("chapters" in name for name in imported), path
        if path.name == "functional.py":
            assert not any(name.startswith("normlib.nn") for name in imported), path


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
    from normlib.data import SHA256

    readme = (ROOT / "data" / "README.md").read_text()
    for name, digest in SHA256.items():
        assert name in readme and digest in readme
        assert (ROOT / "data" / name).stat().st_size == int(re.search(rf"`{re.escape(name)}`.*\| (\d+) \|", readme).group(1))
