"""The layout's rules, checked on the source: who may import whom, and no cycles.

docs/architecture.md draws the parts; these tests keep the drawing true.  The
package's modules hold at most 400 lines and their functions at most 80 (Triton
kernels aside); bench/ and scripts/ at most 450 lines; tests/ is not held to
either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import stitch.core

REPO = Path(__file__).resolve().parent.parent
ROOTS = {
    "core": "stitch.core",
    "codegen": "stitch.codegen",
    "runtime": "stitch.runtime",
    "templates": "stitch.templates",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _import_source(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The module ``from X import ...`` in ``module`` (at ``path``) names, made
    absolute."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """Stitch modules that ``module`` imports (at import time, or anywhere).

    Imports under ``if TYPE_CHECKING:`` count too: a cycle only the type
    checker sees is still two modules that each need the other.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and top_level_only
            ):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _import_source(module, path, node)
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
            for field in ("body", "orelse", "handlers", "finalbody"):
                child = getattr(node, field, None)
                if isinstance(child, list):
                    visit([c for c in child if isinstance(c, ast.stmt)])

    visit(tree.body)
    return {m for m in found if m in MODULES and m != module}


def test_codegen_imports_nothing_from_runtime() -> None:
    for module in MODULES:
        if module.startswith("stitch.codegen"):
            bad = {
                m
                for m in _imports(module, top_level_only=False)
                if m.startswith("stitch.runtime")
            }
            assert not bad, f"{module} imports {sorted(bad)}"


def test_core_imports_nothing_above_it() -> None:
    # core (errors, the emitted contract) is below codegen and runtime, and needs
    # no torch: any part may raise its errors.
    for module, path in MODULES.items():
        if not module.startswith("stitch.core"):
            continue
        bad = {
            m
            for m in _imports(module, top_level_only=False)
            if not m.startswith("stitch.core")
        }
        assert not bad, f"{module} imports {sorted(bad)}"
        tree = ast.parse(path.read_text(), str(path))
        names = {
            (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        }
        assert not {n for n in names if n.split(".")[0] == "torch"}, module


def test_errors_and_the_contract_are_imported_from_core() -> None:
    # Each part takes the errors and the contract from where they live
    # (stitch.core), never through a module that happens to import them: that
    # module could stop importing them, or define a different class by the name.
    shared = set(stitch.core.__all__)
    roots = [REPO / folder for folder in ("bench", "scripts", "tests")]
    files = [
        *MODULES.items(),
        *(("", p) for r in roots for p in sorted(r.rglob("*.py"))),
    ]
    checked = 0
    for module, path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            names = {a.name for a in node.names} & shared
            if not names:
                continue
            checked += 1
            source = _import_source(module, path, node)
            assert source == "stitch.core" or source.startswith("stitch.core."), (
                f"{path.relative_to(REPO)}:{node.lineno} imports {sorted(names)} "
                f"from {source}"
            )
    assert checked, "no import of stitch.core's names found: the walk is broken"


OUTER = (
    "stitch.runtime.kernels",
    "stitch.runtime.examples",
    "stitch.runtime.cli",
    "stitch.runtime.hf",
    "stitch.runtime.vllm",
    "stitch.runtime.harness",
)


@pytest.mark.parametrize("outer", OUTER)
def test_core_imports_no_outer_package(outer: str) -> None:
    # hf needs transformers and vllm needs vLLM (optional extras, vLLM in a venv
    # of its own), and importing kernels or examples registers ops; the core
    # must run without any of them.
    for module in MODULES:
        if module.startswith(OUTER):
            continue
        bad = {
            m
            for m in _imports(module, top_level_only=False)
            if m == outer or m.startswith(outer + ".")
        }
        assert not bad, f"{module} imports {sorted(bad)}"


def test_kernels_import_no_other_outer_package() -> None:
    # The ops and their kernels need only torch (and Triton, on first use): the
    # examples, hf, and anything else on top may use them, not the other way.
    kernels = "stitch.runtime.kernels"
    inside = [m for m in MODULES if m == kernels or m.startswith(kernels + ".")]
    assert len(inside) > 1, f"no modules found under {kernels}"
    for module in inside:
        bad = {
            m
            for m in _imports(module, top_level_only=False)
            if m.startswith(OUTER) and not m.startswith(kernels)
        }
        assert not bad, f"{module} imports {sorted(bad)}"


def test_only_the_command_line_imports_the_harnesses() -> None:
    # The harnesses (vLLM's engine per process, its table, greedy decoding)
    # serve `stitch run` and the benchmarks; no part of Stitch builds on them.
    harness = "stitch.runtime.harness"
    users = {
        module
        for module in MODULES
        if not module.startswith((harness, "stitch.runtime.cli"))
        and any(m.startswith(harness) for m in _imports(module, top_level_only=False))
    }
    assert not users, f"{sorted(users)} import {harness}"
    cli = [m for m in MODULES if m.startswith("stitch.runtime.cli")]
    assert any(
        m.startswith(harness) for c in cli for m in _imports(c, top_level_only=False)
    ), "the command line no longer imports the harnesses: is the rule still needed?"


def test_no_import_cycles() -> None:
    """Imports inside functions count: deferring one hides a cycle from the
    interpreter, not from the reader (store/shared/fleet_cache.py, then tier.py,
    imported eviction.py in a function while eviction.py typed its argument as
    the fleet's cache)."""
    graph = {m: _imports(m, top_level_only=False) for m in MODULES}
    # A package's __init__ importing its own submodules is how it re-exports;
    # a submodule needs its package initialized first anyway, so that edge
    # (submodule -> own package) is not a cycle.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def _python_prints(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (it must exit 0)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_importing_the_runtime_registers_no_example_op() -> None:
    code = (
        "import sys, torch, stitch.runtime\n"
        "from stitch.runtime import CompilationConfig\n"
        "CompilationConfig()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(\n"
        "    ('stitch.runtime.examples', 'stitch.runtime.hf', 'transformers',\n"
        "     'stitch.runtime.kernels', 'stitch.runtime.harness',\n"
        "     'stitch.runtime.vllm', 'vllm')))\n"
        "print(loaded)\n"
    )
    out = _python_prints(code)
    assert out.strip() == "[]"


def test_importing_the_runtime_imports_no_code_generator() -> None:
    """black and jinja2 load when source is generated: a warm start generates none."""
    code = (
        "import sys, torch, stitch.runtime, stitch.codegen\n"
        "print(sorted(m for m in ('black', 'jinja2') if m in sys.modules))\n"
    )
    out = _python_prints(code)
    assert out.strip() == "[]"


def test_emitting_a_models_source_imports_black_only_where_it_runs() -> None:
    """NOTE: [black is imported where it runs] (codegen/layout.py): the
    example llama's stitching source, every statement of a plain shape, is
    written without importing black, and is black's format all the same."""
    code = (
        "import sys\n"
        "from stitch.codegen import generate_execution_code\n"
        "from stitch.runtime.examples import EXAMPLES\n"
        "split_gm = EXAMPLES['llama'].split_graph_module()\n"
        "source, _, _ = generate_execution_code(split_gm)\n"
        "print('black' in sys.modules)\n"
        "print(source, end='')\n"
    )
    out = _python_prints(code)
    imported, source = out.split("\n", 1)
    assert imported == "False"
    import black

    from stitch.codegen.emit import BLACK_MODE

    assert black.format_str(source, mode=BLACK_MODE) == source


def test_no_module_is_over_400_lines() -> None:
    # Files are split by job (STYLE.md), not trimmed to this line.
    long = {
        m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"modules over 400 lines: {long}"


def _is_triton_kernel(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(ast.unparse(d).startswith("triton.jit") for d in node.decorator_list)


def test_no_function_is_over_80_lines() -> None:
    # A long function is usually several phases: name them (Compilation.run's
    # phases are).  A Triton kernel is one launch's body and stays whole.
    long, kernels = [], 0
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if _is_triton_kernel(node):
                kernels += 1
            elif (n := node.end_lineno - node.lineno + 1) > 80:
                long.append(f"{module}.{node.name} ({n} lines)")
    assert kernels >= 2, "the exemption for Triton kernels matched none"
    assert not long, f"functions over 80 lines: {long}"


def test_the_pipeline_is_used_through_its_public_entry() -> None:
    # NOTE: pipeline/api.py: callers outside the pipeline (the saved forward,
    # the engines' integrations, the command line) see two modules of it: the
    # backend's entry, and the tiered start's controls (tiered/controls.py).
    faces = ("stitch.runtime.pipeline.api", "stitch.runtime.pipeline.tiered.controls")
    inside = "stitch.runtime.pipeline"
    checked = 0
    for module in MODULES:
        if module == inside or module.startswith(inside + "."):
            continue
        used = {
            m
            for m in _imports(module, top_level_only=False)
            if m.startswith(inside + ".")
        }
        checked += bool(used)
        bad = {m for m in used if m not in faces}
        assert not bad, f"{module} imports pipeline internals {sorted(bad)}"
    assert checked >= 5  # the saved forward, vLLM, hf and the CLI use it


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("stitch.runtime.pipeline", "stitch.runtime.saved"),
        ("stitch.runtime.store", "stitch.runtime.pipeline"),
        ("stitch.runtime.store", "stitch.runtime.saved"),
        ("stitch.runtime.cudagraph", "stitch.runtime.pipeline"),
        ("stitch.runtime.pipeline", "stitch.runtime.check"),
        ("stitch.runtime.cudagraph", "stitch.runtime.check"),
        # The worker processes know nothing of the pipeline that uses them.
        ("stitch.runtime.workers", "stitch.runtime.pipeline"),
    ],
)
def test_lower_parts_never_call_up(lower: str, upper: str) -> None:
    # The saved forward uses the pipeline, which uses the store and the CUDA
    # graphs; nothing below calls back up (TYPE_CHECKING imports included).
    modules = [m for m in MODULES if m == lower or m.startswith(lower + ".")]
    assert modules
    for module in modules:
        bad = {
            m
            for m in _imports(module, top_level_only=False)
            if m == upper or m.startswith(upper + ".")
        }
        assert not bad, f"{module} imports {sorted(bad)}"


def test_no_benchmark_or_script_is_over_450_lines() -> None:
    files = sorted((REPO / "bench").glob("*.py"))
    assert files
    files += sorted(p for p in (REPO / "scripts").iterdir() if p.is_file())
    long = {
        str(p.relative_to(REPO)): n
        for p in files
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, f"benchmarks or scripts over 450 lines: {long}"


@pytest.mark.parametrize("part", ["stitch.runtime.store", "stitch.runtime.cudagraph"])
def test_a_part_reads_its_section_not_the_whole_config(part: str) -> None:
    # NOTE: [a field declares its checks and its place in the cache key]
    # (runtime/settings.py): the store is handed CacheSettings (and the compile
    # sizes' CompileSettings), CUDA graphs CUDAGraphSettings, never
    # CompilationConfig, so what a part may read is what its section holds.
    inside = [m for m in MODULES if m == part or m.startswith(part + ".")]
    assert len(inside) > 4, f"no modules found under {part}"
    for module in inside:
        assert "stitch.runtime.config" not in _imports(
            module, top_level_only=False
        ), f"{module} imports stitch.runtime.config"
        tree = ast.parse(MODULES[module].read_text())
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert "CompilationConfig" not in names, f"{module} imports CompilationConfig"


def test_the_package_converts_python_text_through_one_module() -> None:
    # NOTE: [an AST built with the collector held off]: a call of ast.parse or
    # ast.literal_eval anywhere else could raise CPython's depth mismatch.
    home = MODULES["stitch.runtime.compat.python_ast"]
    calls = []
    for path in MODULES.values():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("parse", "literal_eval")
                and isinstance(node.value, ast.Name)
                and node.value.id == "ast"
            ) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "ast"
                and {a.name for a in node.names} & {"parse", "literal_eval"}
            ):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not calls, f"ast.parse or ast.literal_eval called directly at {calls}"
