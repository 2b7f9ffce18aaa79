"""``SplitPolicy``: where a graph is cut, the rewrites that cutting needs, and what is said about it.

NOTE: [one policy for splitting]
Splitting involves three steps that must agree on one matcher: rewriting
the splitting SDPA calls' inputs before the graph key is taken (so the key
covers the rewrite; ``sdpa_inputs.py``), warning once per backend about a
splitting op that matched nothing (``split_warnings.py``), and the split itself
(``codegen.split_graph``).  A backend holds one policy for all its graphs;
the policy's matcher comes from ``CompilationConfig.splitting_ops``, which
the config hash covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch.fx as fx

from stitch.codegen import split_graph
from stitch.codegen.matching import OpMatcher
from stitch.codegen.split import SplitItem

from ..config import CompilationConfig
from .sdpa_inputs import rewrite_splitting_sdpa
from .split_warnings import SplittingOpWarnings


class SplitPolicy:
    """The splitting ops of one backend, and the warnings it has given.

    ``quiet`` names splitting ops that may match nothing without a warning
    (an engine's own list, most of which a given model does not use).
    """

    def __init__(self, splitting_ops: Sequence[Any], quiet: Iterable[str] = ()) -> None:
        self.matcher = OpMatcher.parse(splitting_ops)
        self.warnings = SplittingOpWarnings(quiet)

    @classmethod
    def from_config(
        cls, config: CompilationConfig, quiet: Iterable[str] = ()
    ) -> SplitPolicy:
        return cls(config.splitting_ops, quiet)

    def prepare(self, gm: fx.GraphModule) -> None:
        """Rewrite ``gm`` in place before its key is taken."""
        rewrite_splitting_sdpa(gm, self.matcher)

    def split(self, gm: fx.GraphModule) -> tuple[fx.GraphModule, list[SplitItem]]:
        """The split graph and its items, in graph order (warning once per
        splitting op that matched nothing)."""
        self.warnings.check(gm, self.matcher)
        return split_graph(gm, self.matcher)
