"""The example models' layer-name ops, registered with ``torch.library``.

(``stitch::attention``, their attention, is a real op: stitch.runtime.kernels.)
"""

from __future__ import annotations

import torch

_lib = torch.library.Library("stitch", "FRAGMENT")

# NOTE: [layer-name ops]
# Serving models pass a layer's name to ops inside compiled pieces.  Two shapes of
# that, used to show when per-layer strings may share one compiled piece:
# ``stitch::layer_tag`` is composite (it decomposes to plain tensor ops, so the
# name never reaches compiled code) and ``stitch::layer_scale`` is opaque (the
# compiled code calls it with the name baked in).
_lib.define("layer_tag(Tensor x, str layer_name) -> Tensor")
_lib.impl("layer_tag", lambda x, layer_name: x * 1.0, "CompositeImplicitAutograd")


@torch.library.custom_op("stitch::layer_scale", mutates_args=())
def layer_scale(x: torch.Tensor, layer_name: str) -> torch.Tensor:
    """Scales by a factor derived from the layer's name (stands in for a lookup)."""
    return x * (1.0 + (sum(layer_name.encode()) % 7) / 100.0)


@layer_scale.register_fake
def _layer_scale_fake(x: torch.Tensor, layer_name: str) -> torch.Tensor:
    return torch.empty_like(x)
