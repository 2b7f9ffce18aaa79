"""A cache entry is used only where the guards its compile added hold.

NOTE: [the guards a backend call adds are part of its cache entry]
(runtime/compat/shapes.py).  The entry's key is taken before the backend call
does anything; a compile that then specializes the graph (here a custom pass
asking ``n == 7``, on torch 2.11 plain fake propagation did it for every
``linear``) records its guards, and a process with another length must not
load pieces compiled for 7: two lengths, two processes, one cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sympy
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from stitch.runtime.compat.guard_codec import GuardCodecError, encode
from stitch.runtime.compat.shapes import (
    added_guards,
    check_guards,
    guard_mark,
    install_guard,
)

from backend_support import run_worker


def shape_env_with(value: int) -> tuple[ShapeEnv, Any]:
    from torch._dynamo.source import ConstantSource

    env = ShapeEnv()
    return env, env.create_symbol(value, source=ConstantSource("n"))


def test_recorded_guards_are_checked_then_installed() -> None:
    env, s = shape_env_with(9)
    seven = encode(sympy.Eq(s, 7))
    assert check_guards(env, [seven]) == f"guard Eq({s}, 7) does not hold for {s}=9"
    mark = guard_mark(env)
    held = [encode(sympy.Ne(s, 7)), encode(s >= 5)]
    assert check_guards(env, held) == ""
    assert added_guards(mark) == []  # checking installs nothing
    for text in held:
        install_guard(env, text)
    # Installed as guards of this ShapeEnv (Dynamo's, in a backend call).
    assert added_guards(mark) == held


def test_a_replacement_counts_as_an_added_guard() -> None:
    env, s = shape_env_with(7)
    mark = guard_mark(env)
    env.evaluate_expr(sympy.Eq(s, 7))
    assert encode(sympy.Eq(s, 7)) in added_guards(mark)


def test_old_text_guards_read_where_they_are_unambiguous() -> None:
    # NOTE: [which old text guards still read] (compat/guard_codec.py)
    env, s = shape_env_with(9)
    assert check_guards(env, [f"Ne({s}, 7)", f"{s} >= 5", f"2*{s} + 1 > 3"]) == ""
    assert (
        check_guards(env, [f"Eq({s}, 7)"])
        == f"guard Eq({s}, 7) does not hold for {s}=9"
    )


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "Eq(s999, 7)",
        "Eq(x.y, 7)",
        "Eq(s0, 7); 1",
        # Printed by torch's integer functions and sympy's real ones alike.
        "Ne((s0//2), 0)",
        "Eq(Mod(s0, 2), 0)",
        "Ne(floor(s0/2), 0)",
        "Eq(Max(s0, 2), 9)",
        "s0**2 > 4",
        "s0 == 9",
    ],
)
def test_a_guard_that_is_not_one_is_refused(text: str) -> None:
    env, _ = shape_env_with(9)
    with pytest.raises(GuardCodecError, match="guard"):
        check_guards(env, [text])


@pytest.mark.slow
def test_two_lengths_two_processes_one_cache(tmp_path: Path) -> None:
    spec = {
        "cache_dir": str(tmp_path / "cache"),
        "passes": ["SpecializeOnLength"],
        "layers": 1,
        # Dynamic, but a compile may specialize it (mark_dynamic would refuse).
        "mark": "maybe",
    }
    seven = run_worker({**spec, "sizes": [7]})
    # The second process asks for 9 tokens first, then 7 (Dynamo's guard on
    # Ne(n, 7) sends 7 to a second backend call).
    nine = run_worker({**spec, "sizes": [9, 7]})
    again = run_worker({**spec, "sizes": [9]})
    for run in (seven, nine, again):
        assert max(run["diffs"].values()) < 1e-4, run["diffs"]
        assert run["warnings"] == []
    (cold,) = seven["compiled"]
    other, same = nine["compiled"]
    # 9 tokens: the 7-token entry does not apply; an entry of its own, compiled.
    assert other["cache_dir"] != cold["cache_dir"] and not other["warm"]
    # 7 tokens in that process: the first entry, warm.
    assert same["cache_dir"] == cold["cache_dir"] and same["warm"]
    # A third process with 9 tokens finds the second entry, warm.
    (warm,) = again["compiled"]
    assert warm["cache_dir"] == other["cache_dir"] and warm["warm"]
    assert "num_inductor_compiles" not in again["counter"]
