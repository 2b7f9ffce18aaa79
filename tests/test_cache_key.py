"""The cache key covers every setting and factor that changes compiled code.

NOTE: [a field declares its checks and its place in the cache key]
(runtime/settings.py): each field of ``CompilationConfig`` is perturbed to
another valid value, and the config hash and the entry's folder key must change
exactly when its declaration puts it in the key.  A field declared nowhere
fails here.  Then every factor an entry records beside its key (versions,
backend, group, devices, the graph, passes) is perturbed the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.fx as fx

from stitch.runtime import CompilationConfig
from stitch.runtime.settings import DECLARED
from stitch.runtime.store import cache as cache_module
from stitch.runtime.store import location
from stitch.runtime.store.cache import CompileCache
from stitch.runtime.store.digests import graph_key
from stitch.runtime.store.explain import EntryFactors
from stitch.runtime.store.index import EntryIdentity

FIELDS = [f.name for f in dataclasses.fields(CompilationConfig)]
BASE: dict[str, Any] = {
    "compile_sizes": [4, 8],
    "compile_ranges_split_points": [16],
    "max_num_batched_tokens": 64,
}


class _Pass:
    """An Inductor pass (callable on an fx.Graph, with a uuid)."""

    def __init__(self, uuid: str) -> None:
        self._uuid = uuid

    def __call__(self, graph: fx.Graph) -> None:
        pass

    def uuid(self) -> str:
        return self._uuid


# Fields whose other value is an object a declaration cannot hold.
DERIVED = {"inductor_passes": [_Pass("test-pass-1")]}


def _other(name: str) -> Any:
    setting = DECLARED[name][1]
    if setting.has_other:
        return setting.other
    assert name in DERIVED, f"{name}: declare another value, or derive one here"
    return DERIVED[name]


def _folder_key(config: CompilationConfig, monkeypatch: Any) -> str:
    """The folder key of the entry this config opens for one graph."""
    monkeypatch.setattr(location, "note_cache_root", lambda root: None)
    cache = CompileCache.open(
        config.cache, config.backend, "0" * 64, config.compute_hash()
    )
    return location.entry_folder_key(cache.directory)


def test_every_field_is_declared_once() -> None:
    undeclared = sorted(set(FIELDS) - set(DECLARED))
    assert not undeclared, (
        f"CompilationConfig fields {undeclared} declare nowhere whether they enter "
        "the cache key: add each to its section in runtime/settings.py"
    )
    assert set(DECLARED) == set(FIELDS), sorted(set(DECLARED) - set(FIELDS))
    for name, (_, setting) in DECLARED.items():
        assert setting.key or setting.why, f"{name}: say why it is not in the key"


@pytest.mark.parametrize("name", FIELDS)
def test_the_key_changes_exactly_when_the_declaration_says(
    name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert name in DECLARED, f"{name} is declared in no section of settings.py"
    setting = DECLARED[name][1]
    base = {**BASE, **setting.needs, "cache_dir": str(tmp_path / "a")}
    before = CompilationConfig(**base)
    after = CompilationConfig(**{**base, name: _other(name)})
    assert getattr(after, name) != getattr(before, name), f"{name} did not change"
    changed = after.compute_hash() != before.compute_hash()
    assert changed == setting.key, (
        f"{name}: the config hash {'changed' if changed else 'did not change'}, "
        f"but its declaration says it is {'' if setting.key else 'not '}in the key"
    )
    moved = _folder_key(after, monkeypatch) != _folder_key(before, monkeypatch)
    assert moved == setting.key, f"{name}: the entry's folder key disagrees"


def test_a_field_of_a_section_reaches_its_part() -> None:
    """Each section holds what the flat fields say, set before or after."""
    config = CompilationConfig(**BASE)
    config.cache_wait_s = 7.0
    assert config.cache.cache_wait_s == 7.0
    assert config.compile.compile_ranges() == config.compile_ranges()
    assert config.cudagraphs.plan_settings() == config.plan_settings()
    assert config.split.splitting_ops == config.splitting_ops


def test_another_pass_changes_the_key() -> None:
    one = CompilationConfig(inductor_passes=[_Pass("a")])
    other = CompilationConfig(inductor_passes=[_Pass("b")])
    both = CompilationConfig(inductor_passes=[_Pass("a"), _Pass("b")])
    hashes = {c.compute_hash() for c in (one, other, both, CompilationConfig())}
    assert len(hashes) == 4


# What an entry records (store/explain.py's EntryFactors) and what of the
# entry's key covers it; None: recorded to explain a miss, not in the key, why.
RECORDED = {
    "config": "config_hash",
    "backend": "backend",
    "group": "group",
    "devices": "graph_key",
    "graph": "graph_key",
    "versions.torch": "torch_version",
    "versions.stitch": "stitch_version",
    # Not in Stitch's key (recorded to explain a miss): an Inductor artifact's
    # load checks its own system key.  Named here so a change is a decision.
    "versions.triton": None,
    "versions.python": None,
}


def test_every_recorded_factor_is_placed() -> None:
    fields = set(EntryFactors.__struct_fields__) - {"versions"}
    recorded = {name.split(".")[0] for name in RECORDED} - {"versions"}
    assert fields == recorded, "a factor an entry records is placed nowhere here"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(EntryIdentity)])
def test_every_identity_field_moves_the_folder(field: str) -> None:
    identity = EntryIdentity("0.1", "2.13.0", "c" * 64, "g" * 64, "inductor", "")
    other = dataclasses.replace(identity, **{field: getattr(identity, field) + "x"})
    assert location.entry_key(other) != location.entry_key(identity)


def test_versions_reach_the_folder(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CompilationConfig(cache_dir=str(tmp_path))
    before = _folder_key(config, monkeypatch)
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    after_torch = _folder_key(config, monkeypatch)
    monkeypatch.setattr(cache_module, "stitch_version", lambda: "0.0.0+other")
    after_stitch = _folder_key(config, monkeypatch)
    assert len({before, after_torch, after_stitch}) == 3


def _graph(op: Any) -> fx.GraphModule:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(op, (x,)))
    return fx.GraphModule(torch.nn.Module(), graph)


def test_the_graph_and_its_inputs_reach_the_graph_key() -> None:
    x = torch.randn(2, 3)
    key = graph_key(_graph(torch.relu), [x])
    others = {
        "the graph": graph_key(_graph(torch.sigmoid), [x]),
        "the device": graph_key(_graph(torch.relu), [x.to("meta")]),
        "the dtype": graph_key(_graph(torch.relu), [x.double()]),
        "the shape": graph_key(_graph(torch.relu), [torch.randn(3, 2)]),
        "the stride": graph_key(_graph(torch.relu), [x.t().contiguous().t()]),
    }
    for what, other in others.items():
        assert other != key, f"{what} does not reach the graph key"
    assert graph_key(_graph(torch.relu), [torch.randn(2, 3)]) == key  # values: no
