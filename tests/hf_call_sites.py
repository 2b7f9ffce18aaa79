"""What transformers' modeling code passes to an attention function, read from its source.

NOTE: [reading transformers' attention call sites]
A model calls ``ALL_ATTENTION_FUNCTIONS.get_interface(...)(self, q, k, v,
mask, dropout=..., scaling=..., **kwargs)``: the explicit keywords are at the
call site, and ``**kwargs`` holds whatever reached the attention module's
``forward`` without being one of its parameters: what the decoder layer passed
it (``use_cache=use_cache`` for GPT-OSS), what the model passed the layer, and
what the user passed the model (``TransformersKwargs``).  So, per modeling
file: each class's ``forward`` parameters, its submodules (``self.x = Cls(...)``
or a ``ModuleList`` of ``Cls``) and the calls of them (``self.x(...)``, a loop
over ``self.layers``); keywords then flow down every call that passes
``**kwargs`` on, to a fixed point.  Calls through anything else (a helper
function, a module of another file) are not followed: the sets are what the
source says, a lower bound, which is what a test of "every argument is known"
needs.
"""

from __future__ import annotations

import ast
import collections
import gc
import re
import textwrap
from pathlib import Path

MARK = "ALL_ATTENTION_FUNCTIONS"
# NOTE: [only __init__ and forward are parsed]
# The modeling files that call attention functions are some 17 MB of source;
# parsing them whole takes 10-25 s on a busy two-core machine, the methods
# read here (a class's __init__ and forward, cut at the next method or
# top-level statement) under half of that.
_CLASS = re.compile(r"^class (\w+)", re.M)
_METHOD = re.compile(
    r"^    def (__init__|forward)\(.*?(?=^    (?:def |@)|^\S|\Z)", re.M | re.S
)


def attention_keywords(root: Path, user_keys: set[str]) -> dict[str, set[str]]:
    """Every keyword an attention function receives, with the files that pass it."""
    sites, edges, params = [], [], {}
    gc.disable()  # the parse allocates millions of nodes, freed as it goes
    try:
        for path in sorted((root / "models").rglob("modeling_*.py")):
            source = path.read_text()
            if MARK in source:
                classes = _classes(source)
                _scan(classes, path.relative_to(root).as_posix(), sites, edges, params)
    finally:
        gc.enable()
    flows: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for key in params:
        flows[key] |= user_keys
    changed = True
    while changed:
        changed = False
        for caller, callee, keywords, passes in edges:
            if callee not in params or params[callee][1] is None:
                continue
            new = (keywords | (flows[caller] if passes else set())) - params[callee][0]
            if not new <= flows[callee]:
                flows[callee] |= new
                changed = True
    found: dict[str, set[str]] = collections.defaultdict(set)
    for key, keywords, passes in sites:
        for name in keywords | (flows[key] if passes else set()):
            found[name].add(key[0])
    return dict(found)


def _params(fn: ast.FunctionDef) -> tuple[set[str], str | None]:
    a = fn.args
    names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    return names, a.kwarg.arg if a.kwarg else None


def _mentions_mark(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == MARK for n in ast.walk(node))


def _module_classes(
    expr: ast.AST, local: dict[str, ast.AST], depth: int = 0
) -> set[str]:
    """The classes ``expr`` builds a module of: ``Cls(...)``, ``nn.ModuleList([Cls(...)
    for ...])``, ``a if c else b``, or a local name bound to one (``cls = A if c else B``;
    ``cls(...)``)."""
    if depth > 4:
        return set()
    if isinstance(expr, ast.IfExp):
        return _module_classes(expr.body, local, depth + 1) | _module_classes(
            expr.orelse, local, depth + 1
        )
    if isinstance(expr, ast.Name):
        if expr.id in local:
            return _module_classes(local[expr.id], local, depth + 1)
        return {expr.id}
    if not isinstance(expr, ast.Call):
        return set()
    f = expr.func
    name = getattr(f, "attr", None) if isinstance(f, ast.Attribute) else None
    if name in ("ModuleList", "Sequential") and expr.args:
        inner = expr.args[0]
        if isinstance(inner, (ast.ListComp, ast.GeneratorExp)):
            return _module_classes(inner.elt, local, depth + 1)
        if isinstance(inner, (ast.List, ast.Tuple)) and inner.elts:
            return _module_classes(inner.elts[0], local, depth + 1)
    if isinstance(f, ast.Name):
        return _module_classes(f, local, depth + 1)
    return {name} if name else set()


def _self_attr(node: ast.AST) -> str | None:
    if isinstance(node, ast.Subscript):  # self.layers[: n]
        node = node.value
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    ):
        return node.attr
    return None


def _classes(source: str) -> dict[str, dict[str, ast.FunctionDef]]:
    """Each class's ``__init__`` and ``forward``, parsed (NOTE: [only __init__ and forward are parsed])."""
    starts = [(m.start(), m.group(1)) for m in _CLASS.finditer(source)]
    classes: dict[str, dict[str, ast.FunctionDef]] = {}
    for m in _METHOD.finditer(source):
        owner = [name for start, name in starts if start < m.start()]
        if not owner:
            continue
        fn = ast.parse(textwrap.dedent(m.group(0))).body[0]
        assert isinstance(fn, ast.FunctionDef), m.group(0)[:200]
        fn.calls_interface = MARK in m.group(0)  # walks skipped where False
        classes.setdefault(owner[-1], {})[fn.name] = fn
    return classes


def _scan(methods_of: dict, file: str, sites: list, edges: list, params: dict) -> None:
    classes = {}
    for cls_name, methods in methods_of.items():
        attrs: dict[str, set[str]] = {}
        local: dict[str, ast.AST] = {}
        assigns = [
            node
            for node in (ast.walk(methods["__init__"]) if "__init__" in methods else ())
            if isinstance(node, ast.Assign)
        ]
        for node in assigns:
            for t in node.targets:
                if isinstance(t, ast.Name):
                    local[t.id] = node.value
        for node in assigns:
            for t in node.targets:
                attr = _self_attr(t)
                if attr and isinstance(t, ast.Attribute):
                    attrs.setdefault(attr, set()).update(
                        _module_classes(node.value, local)
                    )
        classes[cls_name] = (methods.get("forward"), attrs)
    for name, (forward, attrs) in classes.items():
        if forward is None:
            continue
        key = (file, name)
        params[key] = _params(forward)
        var = params[key][1]
        loop_vars, interfaces, calls = {}, set(), []
        for node in ast.walk(forward):
            if isinstance(node, ast.Call):
                calls.append(node)
            elif isinstance(node, ast.For):
                target, it = node.target, node.iter
                if (
                    isinstance(it, ast.Call)
                    and getattr(it.func, "id", None) == "enumerate"
                    and it.args
                ):
                    it = it.args[0]
                    if isinstance(target, ast.Tuple) and len(target.elts) == 2:
                        target = target.elts[1]
                attr = _self_attr(it)
                if isinstance(target, ast.Name) and attr in attrs:
                    loop_vars[target.id] = attrs[attr]
            elif (
                isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
            ):
                if forward.calls_interface and _mentions_mark(node.value):
                    targets = (
                        node.targets if isinstance(node, ast.Assign) else [node.target]
                    )
                    interfaces |= {t.id for t in targets if isinstance(t, ast.Name)}
        for node in calls:
            f = node.func
            keywords = {k.arg for k in node.keywords if k.arg}
            passes = var is not None and any(
                k.arg is None and isinstance(k.value, ast.Name) and k.value.id == var
                for k in node.keywords
            )
            if (isinstance(f, ast.Name) and f.id in interfaces) or (
                forward.calls_interface and _mentions_mark(f)
            ):
                sites.append((key, keywords, passes))
                continue
            callees = (
                loop_vars.get(f.id)
                if isinstance(f, ast.Name)
                else attrs.get(_self_attr(f) or "")
            )
            for callee in callees or ():
                if callee in classes:
                    edges.append((key, (file, callee), keywords, passes))
