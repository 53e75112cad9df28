"""Backbone networks F(x, noise_cond, class_labels) -> same shape as x.

Every backbone is a ``torch.nn.Module`` with a keyword-only constructor and

    forward(x, noise_cond, class_labels=None) -> Tensor  # same shape as x

* ``x``: (N, C, H, W) for image backbones, (N, D) for the MLP;
* ``noise_cond``: float (N,), c_noise = ln(sigma) / 4 (Karras et al. 2022, "EDM", Table 1);
* ``class_labels``: optional long (N,) in [0, num_classes]; index ``num_classes`` (or ``None``) means
  "unconditional" for classifier-free guidance. Ignored when the backbone has ``num_classes == 0``.

Backbones know nothing about noise processes or preconditioning. Their output layers are zero-initialised,
so an untrained network outputs exactly 0. Each exposes ``input_layer`` (the first layer that sees x) and
``output_layer`` (the zero-initialised last layer) for introspection and tests.

Each module of this package registers its backbone in ``BACKBONES`` with metadata ``presets`` (named
parameter sets) and ``data`` (``"image"`` or ``"tabular"``, the kind of data it takes); modules are
imported automatically, so a new file only needs ``@BACKBONES.register(...)``. Build one with :func:`build_backbone`::

    net = build_backbone("unet", preset="small", in_channels=1)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

BACKBONES: Registry[type[nn.Module]] = Registry("backbone")


def backbone_presets(name: str) -> dict[str, dict[str, Any]]:
    """The named presets of backbone ``name`` (empty dict if it has none)."""
    return dict(BACKBONES.meta(name).get("presets", {}))


def build_backbone(name: str, *, preset: str | None = None, **params: Any) -> nn.Module:
    """Build backbone ``name``, starting from ``preset`` (if given) and overriding it with ``params``.

    Raises ``ConfigError`` (a ``ValueError``) with a one-line message for an unknown backbone, unknown
    preset, unknown parameter or missing required parameter.
    """
    factory = BACKBONES.get(name)
    merged: dict[str, Any] = {}
    if preset is not None:
        presets = backbone_presets(name)
        if preset not in presets:
            valid = ", ".join(presets) or "none"
            raise ConfigError(f"backbone {name!r}: unknown preset {preset!r}; valid: {valid}")
        merged.update(presets[preset])
    merged.update(params)

    sig = inspect.signature(factory)
    accepted = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(accepted) == len(sig.parameters):  # no **kwargs: every key must be a known parameter
        known = {p.name for p in accepted}
        unknown = [k for k in merged if k not in known]
        if unknown:
            raise ConfigError(
                f"backbone {name!r}: unknown parameter {unknown[0]!r}; valid: {', '.join(sorted(known))}"
            )
    try:
        sig.bind(**merged)
    except TypeError as e:  # e.g. a missing required keyword
        raise ConfigError(f"backbone {name!r}: {e}") from None
    try:
        return factory(**merged)
    except (TypeError, ValueError) as e:  # a parameter of the wrong type or out of range
        raise ConfigError(f"backbone {name!r}: {e}") from e


# Import every module of the package so that each registers itself.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
del _mod

__all__ = ["BACKBONES", "backbone_presets", "build_backbone"]
