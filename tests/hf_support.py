"""The family runs the transformers tests share (tests/test_hf.py, tests/test_hf_stitch.py).

See the NOTE: [heavy cases rotate] in tests/test_hf.py.  Two modules, so that
pytest-xdist (``--dist loadfile``) can give the default attention's runs and
Stitch's attention's runs to two workers.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchConfigError
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.hf import FAMILIES, build_model, example_inputs, output_tensor

from backend_support import INDUCTOR_TOL, WarningMessages, counting

NAMES = sorted(FAMILIES)
SLOW = os.environ.get("STITCH_SLOW", "") == "1"
ROTATING = (
    os.environ.get("STITCH_HF_FAMILY")
    or NAMES[datetime.date.today().toordinal() % len(NAMES)]
)
if ROTATING not in FAMILIES:
    raise StitchConfigError(f"STITCH_HF_FAMILY={ROTATING!r} is not one of {NAMES}")
DYNAMIC_LENGTHS = (7, 16, 33)
LENGTHS = DYNAMIC_LENGTHS + (1,)
BATCH = 2
DEEP_LAYERS = 4  # test_identical_layers_share_compiles, against the families' 2
WORKER = Path(__file__).with_name("hf_worker.py")
SDPA = torch._C._nn.scaled_dot_product_attention


def heavy(name: str) -> bool:
    return SLOW or name == ROTATING


def skip_unless_heavy(name: str) -> None:
    if not heavy(name):
        pytest.skip(
            f"slow for {name}: today's Inductor family is {ROTATING}; STITCH_SLOW=1 "
            "runs every family (see NOTE: [heavy cases rotate])"
        )


class FamilyRun:
    """One family's tiny model compiled with the default config, run at every length,
    its pieces compiled in the backend call (``tiered_start=False``: the
    checks count compiles, read each graph's pieces and start a second
    process warm from its entry).

    ``attn``: None, the model's default attention (SDPA, or transformers' eager
    attention for Gemma 2 and GPT-OSS); ``"stitch"``, Stitch's op.  Every
    output is compared with the default attention's eager output.  Inductor
    pieces for the heavy families' default attention, eager pieces otherwise
    (NOTE: [heavy cases rotate]); everything else is the default config.
    """

    def __init__(
        self,
        name: str,
        cache_dir: Path,
        attn: str | None = None,
        inductor: bool | None = None,
    ) -> None:
        # The families share transformers' forward wrappers: a reset keeps the
        # Dynamo cache entries of one family from counting against the next.
        torch._dynamo.reset()
        self.name = name
        self.attn = attn
        self.cache_dir = cache_dir
        if inductor is None:
            inductor = heavy(name) and attn == split_attn(name)
        self.piece_compiler = "inductor" if inductor else "eager"
        # NOTE: from_config writes the implementation into its config: each
        # model is built from a config of its own (build_model makes one).
        self.reference = build_model(name)
        self.model = (
            self.reference
            if attn is None
            else build_model(name, attn_implementation=attn)
        )
        self.default_attention = self.reference.config._attn_implementation
        config = CompilationConfig(
            backend=self.piece_compiler, cache_dir=str(cache_dir), tiered_start=False
        )
        self.backend = StitchBackend(config)
        self.compiled = torch.compile(self.model, backend=self.backend, dynamic=True)
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.length_deltas: dict[int, dict[str, int]] = {}
        handler = WarningMessages()
        stitch_log = logging.getLogger("stitch")
        stitch_log.addHandler(handler)
        try:
            with torch.no_grad():
                with counting() as self.dynamic_deltas:
                    for n in DYNAMIC_LENGTHS:
                        with counting() as self.length_deltas[n]:
                            self.run(n)
                with counting() as self.one_deltas:
                    self.run(1)
        finally:
            stitch_log.removeHandler(handler)
        self.warnings = handler.messages

    def run(self, n: int) -> None:
        kwargs = example_inputs(self.name, BATCH, n, seed=n)
        ref = output_tensor(self.name, self.reference(**kwargs))
        eager = output_tensor(self.name, self.model(**kwargs))
        out = output_tensor(self.name, self.compiled(**kwargs))
        self.outputs[n] = (ref, eager, out)

    def splits_at(self) -> Any:
        """The op the default config splits this run at, or None (nothing to split)."""
        if self.attn == "stitch":
            return torch.ops.stitch.hf_attention  # Dynamo keeps the packet
        return SDPA if self.default_attention == "sdpa" else None


def split_attn(name: str) -> str | None:
    """The attention the heavy checks use: the default where it splits, else Stitch's."""
    return None if FAMILIES[name].default_attention == "sdpa" else "stitch"


class Runs:
    """The module's runs, each built once, whichever fixture asks first."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp = tmp_path_factory
        self.runs: dict[tuple[str, str | None], FamilyRun] = {}

    def get(
        self, name: str, attn: str | None, inductor: bool | None = None
    ) -> FamilyRun:
        if (name, attn) not in self.runs:
            cache = self.tmp.mktemp(f"cache-{name}-{attn or 'default'}")
            self.runs[name, attn] = FamilyRun(name, cache, attn, inductor)
        return self.runs[name, attn]


def check_numbers(run: FamilyRun) -> None:
    assert set(run.outputs) == set(LENGTHS)
    for n, (ref, eager, out) in run.outputs.items():
        what = f"{run.name}, attn={run.attn or run.default_attention}, length {n}"
        # the attention under test, eager, against the default attention's
        torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5, msg=what)
        if run.piece_compiler == "eager":
            # Dynamo's ops, in eager order: the same bits as the model's eager run.
            assert torch.equal(out, eager), what
        else:
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL, msg=what)


def check_splits(run: FamilyRun) -> None:
    layers = 2
    op = run.splits_at()
    for result in run.backend.compiled:
        kinds = [r.splitting for r in result.reports]
        if op is None:
            assert kinds == [False], (run.name, kinds)
            continue
        # compiled, attention, compiled, attention, compiled
        assert kinds == [False, True] * layers + [False], run.name
        for report in result.reports:
            if not report.splitting:
                continue
            piece = getattr(result.split_gm, report.name)
            targets = [n.target for n in piece.graph.nodes if n.op == "call_function"]
            assert op in targets, (report.name, targets)
    unsplit = [w for w in run.warnings if "no splitting op" in w]
    if op is None:
        # NOTE: [nothing to split where there is attention] in split_warnings.py
        assert len(unsplit) == 1, run.warnings
        assert type(run.model.model).__name__ in unsplit[0], unsplit
        assert (
            'register() and build the model with attn_implementation="stitch"'
            in unsplit[0]
        )
    else:
        assert unsplit == [], run.warnings


def check_names(family_run: FamilyRun) -> None:
    """NOTE: [names from the model's paths]: no Dynamo spelling, nothing over 48
    characters, every renamed parameter in the header's table."""
    for result in family_run.backend.compiled:
        code = "\n".join(
            ln for ln in result.code.splitlines() if not ln.lstrip().startswith("#")
        )
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code))
        assert max(len(n) for n in names) <= 48, max(names, key=len)
        assert not [n for n in names if "_modules_" in n or n.startswith("l_self_")]
        params = re.search(r"def execution_fn\(([^)]*)\)", result.code, re.S)
        assert params is not None
        table = dict(re.findall(r"^#   (\w+): .* \((\w+)\)$", result.code, re.M))
        # A size is named for the input dimension it is (NOTE: [every size
        # gets a name]): its row says which, and no raw symbol is left.
        sizes = set(re.findall(r"^#   (\w+): size\b", result.code, re.M))
        assert not re.search(r"\b[su]\d+\b", code), code
        # Every parameter came from a Dynamo name, so each one Stitch renamed
        # is in the table.
        for p in (x.strip() for x in params.group(1).split(",")):
            if p and not p.startswith(("*", "__")):
                assert p in table or p in sizes, (p, sorted(table), sorted(sizes))
