"""The GPU table's cells and issue 60's targets for bench/transformers_engine.py."""

from __future__ import annotations

from typing import Any


def agreement(tokens: list[list[int]], eager: list[list[int]]) -> str:
    """How ``tokens`` agree with eager's: "= eager", or the share equal, how
    many differ and the first step (0: the token after the prompt) at which
    any request's differ."""
    steps = [
        (step, a == b)
        for x, y in zip(tokens, eager, strict=True)
        for step, (a, b) in enumerate(zip(x, y, strict=True))
    ]
    differ = [step for step, same in steps if not same]
    if not differ:
        return "= eager"
    share = 100 * (len(steps) - len(differ)) / len(steps)
    return f"{share:.0f}% = eager ({len(differ)} differ, from step {min(differ)})"


def gpu_cells(
    label: str, r: dict[str, Any], forward: dict[str, Any], eager: dict[str, Any]
) -> tuple[str, ...]:
    """One engine run's row of the GPU table ("-": not measured)."""
    long = r.get("long_ttft_ms")
    ratio = long / forward["forward_ms"] if long and "forward_ms" in forward else None
    decode = r.get("decode_tok_s")
    return (
        label,
        f"{r['start_s']:.1f}",
        f"{r['ttft_s']:.3f}",
        f"{r['tok_s']:.0f}",
        "-" if decode is None else f"{decode:.0f}",
        "-" if long is None else f"{long:.1f}",
        "" if ratio is None else f"{ratio:.2f}x",
        agreement(r["tokens"], eager["tokens"]) if "tokens" in eager else "",
        str(r.get("inductor_compiles", "")),
    )


def gpu_targets(rows: list[tuple[str, str, dict[str, Any]]], dtype: str) -> list[str]:
    """Issue 60's engine targets for each Stitch run, met or missed: float32
    tokens equal eager's; the long prompt's ttft within 1.2x the SDPA forward;
    decode at least the engine's own CUDA-graph path (eager in its graphs); a
    warm process with no Inductor compile and eager's tokens."""
    by = {label: r for _, label, r in rows if "error" not in r}
    forward = next((r for run, _, r in rows if run == "sdpa" and "error" not in r), {})
    eager = next((r for run, _, r in rows if run == "eager" and "error" not in r), {})
    graphs = next((r for run, _, r in rows if run == "eager+graphs"), {})
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for run, label, _ in rows:
        r = by.get(label)
        if r is None or not run.startswith("stitch"):
            continue
        found = []
        if "tokens" in eager:
            same = agreement(r["tokens"], eager["tokens"])
            found.append(
                f"tokens {same}"
                + (f" ({verdict(same == '= eager')})" if dtype == "float32" else "")
            )
        if "long_ttft_ms" in r and "forward_ms" in forward:
            ratio = r["long_ttft_ms"] / forward["forward_ms"]
            found.append(
                f"long ttft {ratio:.2f}x SDPA (<= 1.2x: {verdict(ratio <= 1.2)})"
            )
        if "decode_tok_s" in r and graphs.get("decode_tok_s"):
            ratio = r["decode_tok_s"] / graphs["decode_tok_s"]
            found.append(
                f"decode {ratio:.2f}x the engine's graphs (>= 1x: {verdict(ratio >= 1)})"
            )
        if "warm" in label:
            none = r.get("inductor_compiles") == 0
            found.append(
                f"warm: {r.get('inductor_compiles')} Inductor compiles ({verdict(none)})"
            )
        lines.append(f"- {label}: " + "; ".join(found))
    return lines
