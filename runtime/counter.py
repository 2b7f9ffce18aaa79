"""``compilation_counter``: what the backend did, for tests and diagnostics."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator


@dataclasses.dataclass
class CompilationCounter:
    num_graphs_seen: int = 0
    num_piecewise_graphs_seen: int = 0
    num_piecewise_capturable_graphs_seen: int = 0
    num_backend_compilations: int = 0
    num_inductor_compiles: int = 0
    num_cache_hits: int = 0
    num_cache_misses: int = 0
    num_cache_faults: int = 0
    # Warm loads that failed and compiled instead (pipeline/warm_load.py).
    num_warm_load_failures: int = 0
    num_compiled_artifacts_saved: int = 0
    num_compiled_artifacts_loaded: int = 0
    # Artifacts loaded from their prebuilt record (no Inductor, no kernel build).
    num_prebuilt_loads: int = 0
    num_cudagraph_captured: int = 0

    def snapshot(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @contextlib.contextmanager
    def expect(self, **deltas: int) -> Iterator[None]:
        """Assert that the block changes the named counters by exactly ``deltas``."""
        unknown = set(deltas) - set(self.snapshot())
        if unknown:
            raise ValueError(f"unknown counter field(s): {sorted(unknown)}")
        before = self.snapshot()
        yield
        after = self.snapshot()
        wrong = {
            name: (after[name] - before[name], want)
            for name, want in deltas.items()
            if after[name] - before[name] != want
        }
        if wrong:
            detail = ", ".join(
                f"{name}: changed by {got}, expected {want}"
                for name, (got, want) in sorted(wrong.items())
            )
            raise AssertionError(f"compilation_counter mismatch: {detail}")


# NOTE: [one process-wide counter]
# Like vLLM's, the counter is process-wide instrumentation only: nothing reads it
# to make decisions.
compilation_counter = CompilationCounter()
