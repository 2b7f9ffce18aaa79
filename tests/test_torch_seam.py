"""Torch's private modules are used only through the seam, ``stitch.runtime.compat``.

NOTE: [one seam for torch's private APIs] (runtime/compat/__init__.py): every
use of these modules in the runtime goes through one small module per concern,
so the next torch release is a few files to read.  This test reads the source
(imports, attribute chains such as ``torch._dynamo.config``, and strings naming
such a module, as the prebuilt loader's module names did) and fails on a use
anywhere else in ``runtime/``, ``codegen/`` or ``core/``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEAM = REPO / "runtime" / "compat"
PRIVATE = re.compile(
    r"torch\.(_dynamo|_inductor|_subclasses|_guards|_functorch|_dispatch"
    r"|_C\._dynamo|utils\._\w+|compiler\._\w+)(\.|$)"
)
# Whole strings that are a dotted name (a module or an attribute path).
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain rooted at a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def private_uses(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    docstrings = {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Attribute):
            names = [n for n in [dotted(node)] if n]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and DOTTED.fullmatch(node.value)
        ):
            names = [node.value]
        for name in names:
            if PRIVATE.match(name):
                found.append(f"{filename}:{node.lineno}: {name}")
    return sorted(set(found))


def outside_the_seam() -> list[Path]:
    files = [
        path
        for folder in ("runtime", "codegen", "core")
        for path in (REPO / folder).rglob("*.py")
    ]
    return sorted(p for p in files if SEAM not in p.parents)


def test_no_private_torch_module_outside_the_seam() -> None:
    uses = []
    for path in outside_the_seam():
        uses += private_uses(path.read_text(), str(path.relative_to(REPO)))
    assert not uses, "use these through stitch.runtime.compat:\n" + "\n".join(uses)


@pytest.mark.parametrize(
    "source",
    [
        "import torch._dynamo",
        "from torch._inductor import standalone_compile",
        "from torch.utils._pytree import tree_map",
        "x = torch._guards.TracingContext.try_get()",
        "isinstance(v, torch._subclasses.FakeTensor)",
        'MODULE = "torch._inductor.async_compile"',
        "p = torch._C._dynamo.guards.x",
    ],
)
def test_the_check_finds_each_kind_of_use(source: str) -> None:
    assert private_uses(source, "m.py"), source


def test_the_check_leaves_public_names_and_docstrings() -> None:
    source = (
        '"""Wraps ``torch._inductor.standalone_compile``."""\n'
        "import torch.fx\n"
        "torch.compiler.allow_in_graph\n"
        "torch._ops.OpOverload\n"
        'message = "see torch._dynamo.config for more"\n'
    )
    assert private_uses(source, "m.py") == []


def test_the_seam_imports_neither_dynamo_nor_inductor_nor_sympy() -> None:
    """A warm start imports the runtime and the seam: none of these (sympy alone: 1.6 s at load 7)."""
    code = (
        "import sys, pkgutil, importlib, stitch.runtime, stitch.runtime.compat as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('stitch.runtime.compat.' + m.name)\n"
        "heavy = ('torch._dynamo', 'torch._inductor', 'sympy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
