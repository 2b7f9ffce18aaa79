"""The report of bench/gpu_serving.py: the tables and the targets, from its results."""

from __future__ import annotations

from typing import Any

from gpu_serving_model import DESCRIPTIONS

from stitch.runtime.tables import markdown_table


# -- the report ------------------------------------------------------------------------------
def overhead_us(
    results: dict[str, Any], variant: str, n: int, p10: bool = False
) -> float | None:
    """Host time minus the floor: one attention call per layer, one replay per graph
    (``p10``: both at their 10th percentile, NOTE: [host time's low percentile])."""
    unit = "_p10_us" if p10 else "_us"
    row = results["variants"].get(variant, {}).get("sizes", {}).get(n)
    if row is None or "host" + unit not in row:
        return None
    layers = int(results["model"]["num_layers"])
    floor = results["floor"][n]
    attention, replay = floor["attention" + unit], floor["replay" + unit]
    if variant.startswith("stitch-full"):  # FULL, tuned or not
        full_limit = max(results["args"]["capture_sizes"])
    else:
        full_limit = results["args"]["max_full"] if variant == "stitch-fp" else 0
    if n <= full_limit:
        base = replay
    else:
        base = layers * attention + (layers + 1) * replay
    return row["host" + unit] - base


def report(results: dict[str, Any]) -> str:
    lines = ["## GPU serving benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in results["machine"].items()]
    model = results["model"]
    lines.append(
        f"- model: {model['model']}, {model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_heads']} heads, intermediate {model['intermediate_size']}, "
        f"{model['dtype']}, KV cache {model['max_seqs']} x {model['max_len']}"
    )
    lines.append(f"- capture sizes: {results['args']['capture_sizes']}")
    floor = results.get("read_floor")
    if floor:
        copied = floor.get("copy_bytes", 1 << 30) / 2**20
        lines.append(
            f"- copy bandwidth {floor['copy_gbs']:.0f} GB/s (a {copied:.0f} MiB copy on "
            f"the device, read + write); weights read whole per decode step "
            f"{floor['weight_bytes'] / 1e9:.3f} GB: a floor of {floor['floor_us']:.1f} µs"
        )
    lines += ["", *back_to_back_table(results)]
    lines += ["", *per_forward_table(results)]
    lines += ["", *graphs_table(results)]
    lines += [
        "",
        "Floor (host µs, measured alone, median / p10): "
        + ", ".join(
            f"n={n}: attention {f['attention_us']:.1f} / {f['attention_p10_us']:.1f}, "
            f"replay {f['replay_us']:.1f} / {f['replay_p10_us']:.1f}"
            for n, f in results["floor"].items()
        ),
    ]
    lines += ["", "### Targets", ""]
    lines += targets(results)
    lines += copies(results)
    return "\n".join(lines) + "\n"


def cell(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def back_to_back_table(results: dict[str, Any]) -> list[str]:
    """The time per forward of forwards issued back to back, min and median
    over the repeats, beside the weight-read floor (NOTE: [the variants take
    turns] in gpu_serving_timing.py); then what each variant is."""
    floor = results.get("read_floor", {}).get("floor_us")
    rows = [
        (
            variant,
            n,
            cell(row["back_to_back_min_us"]),
            cell(row["back_to_back_median_us"]),
            cell(floor),
            f"{row['back_to_back_min_us'] / floor:.2f}x" if floor else "",
        )
        for variant, data in results["variants"].items()
        for n, row in data["sizes"].items()
    ]
    repeats = results["args"].get("repeats", 1)
    headers = ["variant", "tokens", "back to back µs, min", "back to back µs, median"]
    headers += ["weight-read floor µs", "min / floor"]
    return [
        f"### Forwards back to back ({repeats} repeats, the variants in turn)",
        "",
        markdown_table(headers, rows, align="lrrrrr"),
        "",
        *(
            f"- {variant}: {DESCRIPTIONS.get(variant, '')}"
            for variant in results["variants"]
        ),
    ]


def per_forward_table(results: dict[str, Any]) -> list[str]:
    """One forward from an idle device, its samples pooled over the repeats."""
    rows = [
        (
            variant,
            n,
            f"{row['latency_us']:.1f}",
            f"{row['host_us']:.1f}",
            cell(overhead_us(results, variant, n)),
            cell(row.get("host_p10_us")),
            cell(overhead_us(results, variant, n, p10=True)),
        )
        for variant, data in results["variants"].items()
        for n, row in data["sizes"].items()
    ]
    headers = ["variant", "tokens", "latency µs", "host µs", "host overhead µs"]
    headers += ["host µs, p10", "host overhead µs, p10"]
    return [
        "### One forward from an idle device (all repeats' forwards)",
        "",
        markdown_table(headers, rows, align="lrrrrrr"),
    ]


def graphs_table(results: dict[str, Any]) -> list[str]:
    rows = [
        (
            variant,
            f"{data['compile_s']:.1f}",
            f"{data['capture_s']:.2f}",
            data["graphs"],
            f"{data['graph_mib']:.0f}",
            f"{data.get('largest_mib', 0.0):.0f}" if data["graphs"] else "",
            data["note"],
        )
        for variant, data in results["variants"].items()
    ]
    headers = ["variant", "compile s", "capture s", "graphs", "graph memory MiB"]
    headers += ["largest size alone MiB", "note"]
    return [markdown_table(headers, rows, align="lrrrrrl")]


def targets(results: dict[str, Any]) -> list[str]:
    variants = results["variants"]
    lines = []
    if "gpu" not in results["machine"]:
        lines.append(
            "- latency targets: need a GPU (this run measured host costs only)"
        )
    for n in (1, 8) if "gpu" in results["machine"] else ():
        piecewise = variants.get("stitch-piecewise", {}).get("sizes", {}).get(n)
        full = variants.get("stitch-full", {}).get("sizes", {}).get(n)
        if piecewise and full:
            ratio = piecewise["latency_us"] / full["latency_us"]
            verdict = "met" if ratio <= 1.10 else "NOT met"
            lines.append(
                f"- batch {n}: hoisted PIECEWISE latency / FULL = {ratio:.3f} "
                f"(target <= 1.10: {verdict})"
            )
    for p10, what, key in (
        (False, "median", "host_us"),
        (True, "10th percentile", "host_p10_us"),
    ):
        for n in results["args"]["decode"]:
            hoisted = overhead_us(results, "stitch-piecewise", n, p10=p10)
            vllm = overhead_us(results, "stitch-vllm", n, p10=p10)
            if hoisted is None or vllm is None:
                continue
            raw = (
                variants["stitch-vllm"]["sizes"][n][key]
                / variants["stitch-piecewise"]["sizes"][n][key]
            )
            if hoisted <= 0:
                lines.append(
                    f"- batch {n} ({what}): hoisted host overhead {hoisted:.1f} µs is "
                    f"within the floor's error (vLLM-style: {vllm:.1f} µs); raw host "
                    f"time ratio {raw:.2f}"
                )
                continue
            ratio = vllm / hoisted
            verdict = "met" if ratio >= 3 else "NOT met"
            lines.append(
                f"- batch {n} ({what}): host overhead vLLM-style / hoisted = {ratio:.2f} "
                f"(target >= 3: {verdict}); raw host time ratio {raw:.2f}"
            )
    lines += memory_targets(results)
    if "gpu" in results["machine"]:
        lines += speed_targets(results)
    return lines


def memory_targets(results: dict[str, Any]) -> list[str]:
    """Capture of every size in under 30 s; all sizes' memory at most 1.2x the largest's."""
    lines = []
    largest = max(results["args"]["capture_sizes"])
    for variant, data in results["variants"].items():
        if not data["graphs"]:
            continue
        seconds = data["capture_s"]
        lines.append(
            f"- {variant}: {data['graphs']} graphs for sizes up to {largest} captured in "
            f"{seconds:.1f} s (target < 30 s: {'met' if seconds < 30 else 'NOT met'})"
        )
        if data.get("largest_mib", 0) > 0:
            ratio = data["graph_mib"] / data["largest_mib"]
            lines.append(
                f"- {variant}: graph memory {data['graph_mib']:.0f} MiB, the largest size "
                f"alone {data['largest_mib']:.0f} MiB: {ratio:.2f}x "
                f"(target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})"
            )
    return lines


# Shown beside FULL, not a mode to choose: FULL as it was before its own passes.
OLD = ("stitch-full-copies",)


def best_stitch(variants: dict[str, Any], n: int) -> tuple[str, float, float] | None:
    """The Stitch variant whose forwards back to back are fastest at ``n`` tokens
    (the min over the repeats), that min and its median."""
    stitch = {
        v: (
            d["sizes"][n]["back_to_back_min_us"],
            d["sizes"][n]["back_to_back_median_us"],
        )
        for v, d in variants.items()
        if v.startswith("stitch-") and v not in OLD and n in d["sizes"]
    }
    if not stitch:
        return None
    best = min(stitch, key=lambda v: stitch[v][0])
    return best, *stitch[best]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def speed_targets(results: dict[str, Any]) -> list[str]:
    """Stitch's best mode at batch 1 within 1.5x the weight-read floor, and faster
    than reduce-overhead at every decode size: forwards back to back, the min
    over the repeats (the median beside it, NOTE: [the variants take turns])."""
    variants = results["variants"]
    lines = []
    floor = results.get("read_floor")
    at_1 = best_stitch(variants, 1)
    if floor and at_1:
        best, low, mid = at_1
        ratio, mid_ratio = low / floor["floor_us"], mid / floor["floor_us"]
        lines.append(
            f"- batch 1: best Stitch ({best}) back to back {low:.1f} µs = {ratio:.2f}x "
            f"the weight-read floor {floor['floor_us']:.1f} µs (target <= 1.5x: "
            f"{verdict(ratio <= 1.5)}); median {mid:.1f} µs = {mid_ratio:.2f}x"
        )
    for n in results["args"]["decode"]:
        ro = variants.get("compile-ro", {}).get("sizes", {}).get(n)
        at_n = best_stitch(variants, n)
        if not ro or not at_n:
            continue
        best, low, mid = at_n
        ratio = low / ro["back_to_back_min_us"]
        mid_ratio = mid / ro["back_to_back_median_us"]
        lines.append(
            f"- batch {n}: best Stitch ({best}) back to back {low:.1f} µs vs "
            f"reduce-overhead {ro['back_to_back_min_us']:.1f} µs: {ratio:.3f}x "
            f"(target < 1: {verdict(ratio < 1)}); medians {mid_ratio:.3f}x"
        )
    return lines


def copies(results: dict[str, Any]) -> list[str]:
    """FULL beside FULL with its residual adds' copies, per decode size."""
    full = results["variants"].get("stitch-full", {}).get("sizes", {})
    old = results["variants"].get("stitch-full-copies", {}).get("sizes", {})
    lines = []
    for n in results["args"]["decode"]:
        if n not in full or n not in old:
            continue
        ratio = full[n]["back_to_back_min_us"] / old[n]["back_to_back_min_us"]
        mid = full[n]["back_to_back_median_us"] / old[n]["back_to_back_median_us"]
        lines.append(
            f"- batch {n}: stitch-full (no copies) back to back "
            f"{full[n]['back_to_back_min_us']:.1f} µs vs stitch-full-copies "
            f"{old[n]['back_to_back_min_us']:.1f} µs: {ratio:.3f}x (medians {mid:.3f}x)"
        )
    if not lines:
        return []
    return ["", "### The residual adds' copies (not a target)", "", *lines]
