"""Where one model's saved forwards live under one config, and how one is loaded or compiled.

NOTE: [one owner of the config in saved/]
:func:`aot_compile` makes one :class:`SavedForwardStore` from the config, the CUDA
graph manager and the guards switch, and hands the store on; nothing else in
``saved/`` takes the config.  The store answers what every step needs of it:
the record's folder (by the model's class and structure, under the cache
root), what a record must have been saved for (:meth:`factors`), the fleet's
cache behind the local one, a load (:meth:`load`) and a compile that saves
(:meth:`compile_and_save`).  The input check asks the same store for a later
signature's forward, so the first signature and every later one are loaded
and compiled alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..pipeline.api import ArtifactSource, StitchBackend
from ..store.location import cache_root
from ..store.shared.fleet_cache import FleetCache
from .compile import compile_and_save
from .load_saved import load
from .record import factors, record_folder


@dataclasses.dataclass(eq=False)
class SavedForwardStore:
    """``model``'s saved forwards under ``config``.

    ``backend``: the caller's :class:`StitchBackend`, which compiles the first
    signature (its ``compiled`` list reports it); later signatures get a new
    one each, for the same config and CUDA graphs.
    """

    model: torch.nn.Module
    config: CompilationConfig
    cudagraphs: CUDAGraphManager
    guards: bool = False
    backend: StitchBackend | None = None
    # (position, dim) -> name: dims of one name are one size (NOTE: [one size
    # for dims of one name] in arguments.py), in every signature.
    size_names: Mapping[tuple[int, int], str] = dataclasses.field(default_factory=dict)
    # The cache root every record and entry of this store lies under.
    root: str = dataclasses.field(init=False)
    # ``<root>/aot/<model key>/rank_<r>``; None when the config's backend saves
    # nothing (or the cache is off): there is nothing to load, and nothing is
    # written.
    folder: str | None = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.root = cache_root(self.config.cache)
        # Only a backend that saves its pieces has anything to load.
        saves = not self.config.disable_cache and ArtifactSource.saves(
            self.config.backend
        )
        self.folder = record_folder(self.model, self.root) if saves else None

    def factors(
        self, args: Sequence[Any], dims: Sequence[Sequence[int]]
    ) -> dict[str, Any]:
        """What a record for ``args`` (``dims`` dynamic) must have been saved for."""
        return factors(self.config, args, dims, self.size_names)

    def fleet_cache(self) -> FleetCache | None:
        """The shared store behind the local cache (None: not configured, or off)."""
        return FleetCache.of(self.config.cache)

    def load(
        self, folder: str, now: dict[str, Any], guards: bool | None = None
    ) -> tuple[Callable[..., Any], str] | None:
        """The forward saved in ``folder`` bound to the model, and its cache entry
        (None: nothing saved there); raises ``StaleRecord`` when it does not fit
        ``now``.  ``guards``: default the store's."""
        guards = self.guards if guards is None else guards
        return load(self.model, now, self.root, folder, guards, self.cudagraphs)

    def compile_and_save(
        self,
        args: Sequence[Any],
        dims: Sequence[Sequence[int]],
        folder: str | None,
        now: dict[str, Any] | None = None,
        *,
        first: bool = False,
    ) -> tuple[Callable[..., Any], str | None, StitchBackend]:
        """Compile the forward for ``args`` and save it to ``folder``: the forward,
        the folder it went to (None: not saved) and the backend that compiled it.

        ``first``: the first signature, which may fall back to a Dynamo-entered
        forward when torch's aot_compile fails, and is compiled by the caller's
        backend; a later signature raises what the trace raises."""
        return compile_and_save(
            self.model,
            args,
            dims,
            self.config,
            self.cudagraphs,
            folder,
            self.factors(args, dims) if now is None else now,
            guards=self.guards and first,
            fallback=first,
            backend=self.backend if first else None,
            names=self.size_names,
        )
