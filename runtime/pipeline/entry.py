"""Opening a graph's cache entry: the one whose recorded guards hold for this call.

See NOTE: [the guards a backend call adds are part of its cache entry] in
``compat/shapes.py``.  A graph key names a chain of entries: the first one
compiled, then, for inputs its guards reject, an entry under the key chained
with those guards, and so on.  Almost every graph has one entry with no guards.
"""

from __future__ import annotations

import logging
from typing import Any

from ..compat.guard_codec import GuardCodecError, is_structural, readable
from ..compat.shapes import added_guards, check_guards, guard_mark, install_guard
from ..config import CompilationConfig
from ..store.cache import CompileCache
from ..store.digests import content_hash
from .warm_load import WarmLoadFailed, report, warm_step

log = logging.getLogger("stitch")

# Entries per graph key, one per specialization its compiles made; past that
# the call compiles without the cache (one warning).
MAX_ENTRIES = 8


def open_entry(
    config: CompilationConfig,
    graph_key: str,
    config_hash: str,
    shape_env: Any,
    group: str = "",
    failed: list[str] | None = None,
) -> tuple[CompileCache | None, tuple[str, ...]]:
    """The entry this call uses and its recorded guards (they hold here).

    An entry whose recorded guards all hold is used; the caller installs them
    as Dynamo's guards once the pieces are loaded, as the entry's compile made
    them.  An entry for other sizes is passed over for the next in the chain,
    and so is one whose guards do not decode (its warning is added to ``failed``).
    """
    key = graph_key
    for _ in range(MAX_ENTRIES):
        cache = CompileCache.open(config.cache, config.backend, key, config_hash, group)
        guards = cache.index.guards if cache.index is not None else ()
        if not guards:
            return cache, ()
        why = (
            _check(cache, guards, shape_env, failed if failed is not None else [])
            if shape_env is not None
            else "no sizes"
        )
        if not why:
            return cache, guards
        log.debug(
            "stitch: cache entry %s is not for this call: %s", cache.directory, why
        )
        key = content_hash(f"{key}|{'|'.join(guards)}".encode())
        if group:  # the next entry of the chain needs a folder of its own too
            group = content_hash(f"{group}|{'|'.join(guards)}".encode())
    log.warning(
        "stitch: graph %s has %d cache entries for other sizes; compiling it "
        "without the cache",
        graph_key[:12],
        MAX_ENTRIES,
    )
    return None, ()


def _check(
    cache: CompileCache, guards: tuple[str, ...], shape_env: Any, failed: list[str]
) -> str:
    """Why the entry is not for this call ("" when it is).  A guard that does not
    decode or check passes the entry over too (NOTE: [a warm load that fails
    compiles instead] in ``warm_load.py``; NOTE: [which old text guards still
    read] in ``compat/guard_codec.py``)."""
    try:
        for text in guards:
            with warm_step(cache.directory, "guards", f"guard {readable(text)}", ()):
                why = check_guards(shape_env, (text,))
            if why:
                return why
        return ""
    except WarmLoadFailed as exc:
        then = "the call compiles the next entry of its chain"
        if not any(is_structural(g) for g in guards):
            # An entry from before the guard codec: expected once per entry.
            log.info("stitch cache: %s; %s", exc, then)
            return str(exc)
        failed.append(report(exc, then))
        return failed[-1]


class EntryGuards:
    """The guards of one backend call's entry: those recorded, those it adds."""

    def __init__(self, shape_env: Any) -> None:
        # Taken before the call does anything that could add a guard.
        self.shape_env = shape_env
        self.mark = guard_mark(shape_env)
        self.recorded: tuple[str, ...] = ()
        # The warnings of entries passed over because a guard did not decode.
        self.failed: list[str] = []

    def open(
        self, config: CompilationConfig, graph_key: str, config_hash: str, group: str
    ) -> CompileCache | None:
        cache, self.recorded = open_entry(
            config, graph_key, config_hash, self.shape_env, group, self.failed
        )
        return cache

    def forget(self) -> None:
        """The call goes on without its entry: no recorded guard applies."""
        self.recorded = ()

    def note(self, cache: CompileCache | None) -> None:
        """Record the guards added so far, before anything compiled under them is."""
        if cache is None or not cache.writable:
            return
        try:
            added = added_guards(self.mark)
        except GuardCodecError as exc:
            # Not recorded, the entry would serve sizes its pieces do not.
            cache.stop_saving(str(exc))
            return
        if added:
            cache.record_guards(added)

    def finish(self, cache: CompileCache | None) -> tuple[str, ...]:
        """Install the entry's guards as Dynamo's (as its compile made them), record
        the added ones; every guard the call's result holds under.  Raises
        :class:`WarmLoadFailed` for a guard that does not install."""
        assert cache is not None or not self.recorded
        for text in self.recorded:
            with warm_step(cache.directory, "guards", f"guard {readable(text)}", ()):
                install_guard(self.shape_env, text)
        self.note(cache)
        return self.held()

    def held(self) -> tuple[str, ...]:
        """Every guard the call's result holds under: recorded and added."""
        try:
            added = tuple(added_guards(self.mark))
        except GuardCodecError as exc:
            added = (str(exc),)  # never recorded: a limit the caller names
        return tuple(dict.fromkeys(self.recorded + added))
