"""The import graph of src/cropdoc keeps the layers of docs/architecture.md, and the checker
finds a circle and an upward import when there is one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_layers  # noqa: E402


def test_cropdoc_has_no_circle_and_no_upward_import():
    assert check_layers.problems() == []
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py")])
    assert run.returncode == 0


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


DOC = """<!-- layers:begin -->
| # | layer | modules |
| --- | --- | --- |
| 1 | low | `pkg`, `pkg.low` |
| 2 | middle | `pkg.sub.*` |
| 3 | high | `pkg.high` |
<!-- layers:end -->
"""


def test_the_checker_finds_circles_upward_imports_and_modules_without_a_layer(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from pkg.high import g\n",  # upward, inside a function
            "high.py": "from pkg import low\nfrom pkg.sub import a\n",  # a circle with low
            "sub/__init__.py": "",
            "sub/a.py": "from .. import stray\n",  # relative, downward (stray has no layer)
            "sub/b.py": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.high\n",
            "stray.py": "",
        },
    )
    (tmp_path / "arch.md").write_text(DOC)
    found = check_layers.problems(package, tmp_path / "arch.md")
    assert "circle: pkg.high <-> pkg.low" in found
    assert "upward: pkg.low (low) imports pkg.high (high)" in found
    assert "upward: pkg.sub.b (middle) imports pkg.high (high)" in found  # TYPE_CHECKING counts
    assert any(line.startswith("no layer: pkg.stray") for line in found)
    assert not any("pkg.sub.a" in line for line in found)  # a downward import is fine
    assert len(found) == 4


def test_the_checker_sees_through_the_lazy_api_and_flags_imports_by_name(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": (
                "import importlib\n_API = {'g': 'pkg.high'}\n\n"
                "def __getattr__(name):\n    return importlib.import_module(_API[name])\n"
            ),
            "low.py": "from pkg import g\n",  # the lazy API: an import of pkg.high
            "sub/__init__.py": "",
            "sub/a.py": "import importlib\nm = importlib.import_module('pkg.high')\n",
            "sub/b.py": "def f(name):\n    return __import__(name)\n",
            "high.py": "import importlib\nj = importlib.import_module('json')\n",  # not ours
        },
    )
    (tmp_path / "arch.md").write_text(DOC)
    found = check_layers.problems(package, tmp_path / "arch.md")
    assert "upward: pkg.low (low) imports pkg.high (high)" in found
    assert "hidden: pkg.sub.a imports pkg.high by name (import it plainly)" in found
    assert "hidden: pkg.sub.b imports name by name (import it plainly)" in found
    assert len(found) == 3  # the package's own lazy __getattr__ and json are not flagged


def test_the_checker_keeps_torch_out_of_a_no_torch_layer(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "base.py": "import torch\n",  # its layer may
            "low.py": "def f():\n    import torch.nn.functional as F\n",  # inside a function
            "weights.py": "from safetensors.torch import save\n",
            "uses.py": "from pkg import base\n",  # a module that imports torch
            "clean.py": (
                "import typing\nfrom safetensors.numpy import save\n"
                "if typing.TYPE_CHECKING:\n    import torch\n"  # never runs: fine
            ),
        },
    )
    (tmp_path / "arch.md").write_text(
        "<!-- layers:begin -->\n| # | layer | modules |\n| --- | --- | --- |\n"
        "| 1 | base | `pkg`, `pkg.base` |\n"
        "| 2 | contract (no torch) | `pkg.low`, `pkg.weights`, `pkg.uses`, `pkg.clean` |\n"
        "<!-- layers:end -->\n"
    )
    found = check_layers.problems(package, tmp_path / "arch.md")
    assert sorted(found) == [
        "torch: pkg.low imports torch.nn.functional (its layer imports no torch)",
        "torch: pkg.uses imports pkg.base (its layer imports no torch)",
        "torch: pkg.weights imports safetensors.torch (its layer imports no torch)",
    ]


def test_the_checker_flags_a_question_of_tiledness_outside_the_kinds(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": (
                "def f(meta, info, rows):\n"
                "    if meta.tiles.tile:\n"  # line 2: the flag itself
                "        return 1\n"
                "    n = 1 if info.get('tile') else 2\n"  # line 4: the flag by key
                "    kept = [r for r in rows if not r['tile']]\n"  # line 5: in a filter
                "    size = meta.tiles.tile * 2\n"  # a tile size, not a question
                "    return n, kept, size\n"
            ),
            "kinds.py": "def kind_of(tiles):\n    return 'tiled' if tiles.tile else 'whole'\n",
        },
    )
    (tmp_path / "arch.md").write_text(DOC.replace("`pkg.low`", "`pkg.low`, `pkg.kinds`"))
    found = check_layers.problems(package, tmp_path / "arch.md", kind_modules=("pkg.kinds",))
    assert found == [
        f"kind: pkg.low:{line} asks whether the model is tiled (ask its kind)" for line in (2, 4, 5)
    ]


def test_the_checker_keeps_timm_to_its_one_module(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "hub.py": "import timm\n",  # the one module that may
            "low.py": "def f():\n    from timm.layers import SelectAdaptivePool2d\n",
            "sub/__init__.py": "import timm.utils\n",
            "high.py": "from pkg.hub import timm\n",  # takes it from there: fine
        },
    )
    (tmp_path / "arch.md").write_text(DOC.replace("`pkg.low`", "`pkg.low`, `pkg.hub`, `pkg.sub`"))
    found = check_layers.problems(package, tmp_path / "arch.md", timm_module="pkg.hub")
    assert sorted(found) == [
        "timm: pkg.low imports timm.layers (take timm from pkg.hub)",
        "timm: pkg.sub imports timm.utils (take timm from pkg.hub)",
    ]
