"""Backbones: the frozen networks whose activations define the losses.

A backbone is registered by name (``backbone.arch``) and answers four questions:

- **layers**: its named activations in forward order, each with its channel count and how many
  2x poolings lie before it (:meth:`Backbone.layers`). Every other layer question (validation,
  sizes, the deepest layer, activation counts) is answered here from that one list, so layer
  names are parsed in one place per backbone.
- **parameters**: :meth:`Backbone.load` turns a :class:`nst.spec.WeightsSpec` into a parameter
  pytree and facts for summary.json (at least ``preprocessing``).
- **network**: :meth:`Backbone.network` builds the object the engine calls (:class:`Network`):
  ``prepare(params)`` once per run, then ``features(params, x)`` / ``features_and_grams``.
- optional: ``rectified(name)`` (the ``layers.rectified`` mapping) and memory estimates.

A new backbone is one module that subclasses :class:`Backbone` and calls
:func:`register_backbone`, plus one ``backbone/NAME.yaml``; VGG16/VGG19 (:mod:`nst.backbones.vgg`)
are the built-in ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nst.errors import ConfigError

Params = Mapping[str, Any]


# Values of backbone.* keys typed as plain strings (here, light to import: shell completion).
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")  # backbone.compute_dtype
CONV_CHOICES = ("auto", "xla", "winograd")  # backbone.conv
DTYPES = ("float32", "bfloat16")  # backbone.dtype


@dataclass(frozen=True)
class BackboneSpec:
    """Which network computes the features, and how (plain values from ``backbone.*``)."""

    arch: str = "vgg16"
    pooling: str = "max"
    preprocessing: str = "caffe"  # set from the loaded weights (Backbone.load)
    dtype: str = "float32"
    # Per-block jax.checkpoint: the backward pass recomputes a block's activations instead of
    # keeping them, so much larger images fit in memory (VGG: nst.backbones.vgg_net.apply_vgg).
    remat: bool = False
    # How convolutions run (VGG): auto (Winograd on the CPU for layers with >= 128 channels,
    # XLA's convolution elsewhere), xla or winograd; same function either way.
    conv: str = "auto"
    # Convolution products (VGG): float32, bfloat16 (bf16 operands, float32 accumulation; the
    # activations, Grams, losses and the image stay float32) or auto (per layer, what measures
    # fastest on this machine: nst.backbones.tune; float32 where the CPU has no bf16 units).
    compute_dtype: str = "float32"
    # The optimized image's (height, width), set by the engine: what compute_dtype=auto times.
    step_hw: tuple[int, int] | None = None
    # With remat: the blocks before the first content layer run over strips of about this
    # many rows, one strip at a time (nst.backbones.vgg_net.apply_vgg_striped).
    strip_rows: int = 128


@dataclass(frozen=True)
class Layer:
    """One named activation: its channel count and the 2x poolings up to and including it (its
    activation is the input's size floored ``pools`` times in half)."""

    name: str
    channels: int
    pools: int


class Network(Protocol):
    """What the engine calls; built by :meth:`Backbone.network` for one run's layers."""

    arch: str  # the registered backbone name

    def prepare(self, params: Params) -> Any:
        """Once per run: the parameters the network uses, on the device, with whatever can be
        precomputed (the step takes the result as an argument)."""

    def features(self, params: Any, x: Any) -> dict[str, Any]:
        """Activations ``(N, h, w, C)`` of RGB pixels ``x`` ``(N, H, W, 3)`` in 0..255, for the
        layers the network was built for."""

    def features_and_grams(self, params: Any, x: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`features`, except that some layers may come as unnormalized Grams
        ``(N, C, C)`` in the second dict (VGG's striped blocks); plain networks return ``{}``."""


class Backbone:
    """Base class of a backbone; subclasses give :meth:`layers`, :meth:`load`, :meth:`network`."""

    name: str = ""

    # --- to implement -----------------------------------------------------------------------
    def layers(self) -> Sequence[Layer]:
        raise NotImplementedError

    def load(self, weights: Any) -> tuple[Params, dict[str, Any]]:
        """Parameters for ``weights`` (:class:`nst.spec.WeightsSpec`) and facts for the summary:
        ``preprocessing`` at least (the name the network's ``preprocessing`` field takes)."""
        raise NotImplementedError

    def network(self, spec: BackboneSpec, outputs: Sequence[str], loss: Any) -> Network:
        """The network computing ``outputs`` (``loss``: the run's :class:`nst.engine.LossSpec`,
        for backbones that specialise on it)."""
        raise NotImplementedError

    # --- optional ---------------------------------------------------------------------------
    def check(self, spec: BackboneSpec, weights: Any) -> None:
        """One-line errors for choices this backbone cannot take (``spec.conv``, the weights
        source...), raised while the config is read, before any file is opened."""

    def canonical(self, name: str) -> str:
        """The layer name a user's alias stands for (default: the name itself)."""
        return name

    def rectified(self, name: str) -> str:
        """The layer ``layers.rectified=true`` reads instead of ``name`` (default: itself)."""
        return name

    def min_side(self, name: str) -> int:
        """The smallest image side that leaves ``name`` at least one position."""
        side = 1
        while min(self.layer_size(name, side, side)) < 1:
            side += 1
        return side

    def strip_blocks(self, spec: BackboneSpec, loss: Any) -> int:
        """How many leading blocks run in row strips (memory saver; default none)."""
        return 0

    def step_bytes(self, spec: BackboneSpec, loss: Any, hw: tuple[int, int]) -> int:
        """Rough peak bytes of one float32 step on an ``hw`` image: 2.25 float32 buffers per
        activation up to the deepest layer (XLA:CPU's memory analysis of the VGG16 step
        measured 1.76-1.82; 25% margin), the image-sized buffers (pixels, gradient, optimizer
        moments) and ~1 GiB for the process, weights and targets."""
        h, w = hw
        acts = self.activation_count(self.deepest_layer(loss.layers), h, w)
        return int(4 * (2.25 * acts + 8 * h * w * 3)) + 2**30

    def target_bytes(self, spec: BackboneSpec, loss: Any, hw: tuple[int, int]) -> int:
        """Rough peak bytes of computing a style image's targets on an ``hw`` image: a forward
        pass without gradients, one float32 buffer per activation up to the deepest style layer
        (the features a statistic reads stay live until it is taken), and ~1 GiB as in
        :meth:`step_bytes`."""
        h, w = hw
        acts = self.activation_count(self.deepest_layer(loss.style_layers or loss.layers), h, w)
        return int(4 * (acts + h * w * 3)) + 2**30

    # --- derived from layers() --------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers()]

    def layer(self, name: str) -> Layer:
        for layer in self.layers():
            if layer.name == name:
                return layer
        self.validate_layers([name])
        raise AssertionError  # validate_layers raised

    def validate_layers(self, names: Iterable[str]) -> None:
        """ValueError naming the valid layers when a name is not a layer of this backbone."""
        valid = self.layer_names()
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(
                f"unknown layer(s) {', '.join(map(repr, bad))} for {self.name}; "
                f"valid: {', '.join(valid)}"
            )

    def channels(self, name: str) -> int:
        return self.layer(name).channels

    def downsampling(self, name: str) -> int:
        """How many 2x poolings lie before ``name`` (a pooling layer's own not counted)."""
        layers = list(self.layers())
        k = [x.name for x in layers].index(self.layer(name).name)
        return layers[k - 1].pools if k else 0

    def layer_size(self, name: str, height: int, width: int) -> tuple[int, int]:
        """Height and width of ``name``'s activation: each 2x2 VALID pooling floors both."""
        for _ in range(self.layer(name).pools):
            height, width = height // 2, width // 2
        return height, width

    def deepest_layer(self, names: Iterable[str]) -> str:
        """The requested layer that comes last in the forward pass."""
        order = {n: k for k, n in enumerate(self.layer_names())}
        names = list(names)
        if not names:
            raise ValueError("no layers requested")
        self.validate_layers(names)
        return max(names, key=lambda n: order[n])

    def activation_count(self, last: str, h: int, w: int) -> int:
        """Activation values one ``h`` x ``w`` image produces up to and including ``last``."""
        total = 0
        for layer in self.layers():
            total += (h >> layer.pools) * (w >> layer.pools) * layer.channels
            if layer.name == last:
                break
        return total


@dataclass(frozen=True)
class FunctionNetwork:
    """A :class:`Network` from one function ``apply(params, x) -> {layer: activation}`` that
    computes every layer (enough for small or custom backbones)."""

    arch: str
    apply: Callable[[Any, Any], Mapping[str, Any]]
    outputs: tuple[str, ...]

    def prepare(self, params: Params) -> Any:
        import jax

        return jax.device_put(params)

    def features(self, params: Any, x: Any) -> dict[str, Any]:
        feats = self.apply(params, x)
        return {k: feats[k] for k in self.outputs}

    def features_and_grams(self, params: Any, x: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.features(params, x), {}


# Built-in backbones, imported when first asked for ("module:attribute", a Backbone instance).
_REGISTRY: dict[str, Backbone | str] = {
    "vgg16": "nst.backbones.vgg:VGG16",
    "vgg19": "nst.backbones.vgg:VGG19",
    "squeezenet1_1": "nst.backbones.squeezenet:SQUEEZENET",
}


def register_backbone(backbone: Backbone) -> Backbone:
    """Make ``backbone.arch=<backbone.name>`` select ``backbone``."""
    if not backbone.name:
        raise ValueError("a backbone needs a name")
    _REGISTRY[backbone.name] = backbone
    return backbone


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    """The registered backbone ``name``; one-line ConfigError naming the registered ones."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown backbone.arch {name!r}; registered: {', '.join(backbone_names())} "
            "(nst.backbones.register_backbone adds one)"
        )
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return entry


__all__ = [
    "Backbone",
    "BackboneSpec",
    "FunctionNetwork",
    "Layer",
    "Network",
    "backbone_names",
    "get_backbone",
    "register_backbone",
]
