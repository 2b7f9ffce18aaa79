"""The emitted module's globals: its imports, the module-level aliases of call
targets and the names of inlined pieces' functions, reserved before any local."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from stitch.core.contract import INLINED_PREFIX

from .aliases import Alias, alias_candidate
from .naming import Namespace
from .pieces import is_inlined_piece, single_call
from .values import ConstTable, qualified_target


class ModuleGlobals:
    """Names the module's globals (:meth:`reserve`) and renders call targets
    (:meth:`target_expr`), recording the imports and aliases the code uses."""

    def __init__(self, consts: ConstTable) -> None:
        self.consts = consts
        self.names = Namespace(set())
        self.used_imports: set[str] = set()
        self._aliases: dict[int, Alias] = {}  # id(target) -> alias
        self.used_aliases: list[Alias] = []
        self.function_names: dict[str, str] = {}  # piece -> reserved function name
        # The targets a piece function reads, while one is lowered (NOTE: [one
        # function per structure] in execution.py).
        self.targets_log: list[str] | None = None
        self._named: dict[int, tuple[str | None, str] | None] = {}

    def named_target(self, target: Any) -> tuple[str | None, str] | None:
        """``qualified_target(target)``, looked up once per target."""
        key = id(target)
        if key not in self._named:
            self._named[key] = qualified_target(target)
        return self._named[key]

    def reserve(
        self, split_gm: fx.GraphModule, piece: Callable[[fx.Node], Any]
    ) -> None:
        """Name every module global before any local: imports, functions, aliases.

        ``piece`` fetches the module a top-level ``call_module`` node calls."""
        targets: list[Any] = []
        pieces: list[tuple[str, fx.GraphModule]] = []

        def visit(gm: fx.GraphModule, top_level: bool) -> None:
            for node in gm.graph.nodes:
                if node.op == "call_function" and node.target is not operator.getitem:
                    targets.append(node.target)
                elif node.op == "call_module" and top_level:
                    child = piece(node)
                    if is_inlined_piece(child):
                        pieces.append((node.target, child))
                        visit(child, False)

        visit(split_gm, True)
        roots = set()
        for target in targets:
            named = self.named_target(target)
            if named is not None and named[0] is not None:
                # Reserved up front so no local shadows a module root.
                roots.add(named[0].split(".")[0])
        # torch: the root of the dtype and device literals (values.torch_literal).
        self.names = Namespace(roots | {"torch"})
        for piece, module in pieces:
            if single_call(module) is None and piece not in self.function_names:
                m = re.fullmatch(r"submod_(\d+)", piece)
                suffix = m.group(1) if m else str(len(self.function_names))
                self.function_names[piece] = self.names.create(
                    f"{INLINED_PREFIX}{suffix}"
                )
        for target in targets:
            if id(target) in self._aliases:
                continue
            candidate = alias_candidate(target, self.named_target(target))
            if candidate is not None:
                self._aliases[id(target)] = Alias(target, self.names.create(candidate))

    def target_expr(self, node: fx.Node) -> str:
        """How the emitted code names ``node``'s call target: its alias, its
        qualified name, or a constant slot."""
        alias = self._aliases.get(id(node.target))
        if alias is not None:
            if not alias.value:
                # Module-level: not a read of the function being lowered.
                log, self.consts.log = self.consts.log, None
                alias.value = self.qualified(node.target)
                self.consts.log = log
                self.used_aliases.append(alias)
            expr = alias.name
        else:
            expr = self.qualified(node.target)
        if self.targets_log is not None:
            self.targets_log.append(expr)
        return expr

    def qualified(self, target: Any) -> str:
        named = self.named_target(target)
        if named is None:
            return self.consts.ref(target)
        if named[0] is not None:
            self.used_imports.add(named[0])
        return named[1]
