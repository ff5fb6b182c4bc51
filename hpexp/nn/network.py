"""A feed-forward network: a stack of layers ending in a linear output layer, and the cost that owns
the output nonlinearity (sigmoid or softmax), as in the book's network2.py.

A network is described by layer specs, one per layer as network3 lists them (conv-pool, fully
connected, output), each a frozen dataclass named in config by `_target_`:

    input: [1, 28, 28]      # how each (784-pixel) row is seen by the first layer
    layers:
      - {_target_: hpexp.nn.conv.ConvPoolSpec, filters: 20, size: 5, pool: 2}
      - {_target_: hpexp.nn.network.DenseSpec, units: 100}
      - {_target_: hpexp.nn.network.DenseSpec, units: 10}  # output: linear, the cost owns softmax

`sizes: [784, 30, 10]` is the shorthand for dense layers only: input [784], DenseSpec(30), DenseSpec(10)
(hpexp.train.runner.network_specs reads both forms).
Every layer of the Network maps flat rows to flat rows: consecutive conv-pool specs become one
`ConvStack` (reshape, conv-pools, flatten), so dropout, which masks each layer's input, sees the
inputs of the fully-connected layers only, and never a conv layer's, as in network3.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hpexp.nn.activations import Activation, Identity
from hpexp.nn.conv import ConvPoolSpec, ConvStack
from hpexp.nn.costs import Cost
from hpexp.nn.init import Fan, Initializer
from hpexp.nn.layers import Dense

__all__ = ["DenseSpec", "LayerSpec", "Network", "shapes"]

Masks = Sequence[np.ndarray | float | None]
Shape = tuple[int, ...]


class LayerSpec(Protocol):
    def out_shape(self, in_shape: Shape) -> Shape: ...

    def build(
        self,
        in_shape: Shape,
        activation: Activation,
        init: Initializer,
        rng: np.random.Generator,
        dtype: str,
        *,
        output: bool = False,
    ) -> Any: ...


@dataclass(frozen=True)
class DenseSpec:
    """A fully-connected layer of `units` neurons on the flattened input (the output layer if last)."""

    units: int

    def out_shape(self, in_shape: Shape) -> Shape:
        if not (isinstance(self.units, int) and self.units >= 1):
            raise ValueError(f"a dense layer needs units >= 1, got {self.units!r}")
        return (self.units,)

    def build(
        self,
        in_shape: Shape,
        activation: Activation,
        init: Initializer,
        rng: np.random.Generator,
        dtype: str,
        *,
        output: bool = False,
        lead: Shape = (),
    ) -> Dense:
        n_in, fan = math.prod(in_shape), Fan(math.prod(in_shape), self.units, output)
        # Drawn as (n_in, n_out), the order of the random stream since the first release, and
        # stored as the book's (n_out, n_in): the same seed still gives the same network.
        w = init.weights((*lead, n_in, self.units), rng, fan).swapaxes(-1, -2).astype(dtype)
        b = init.biases((*lead, 1, self.units), rng, fan).astype(dtype)
        return Dense(w, b, Identity() if output else activation)


def shapes(input_shape: Shape, specs: Sequence[LayerSpec]) -> list[Shape]:
    """The shape of one example after the input and after each layer; ValueError if one cannot fit."""
    out = [tuple(input_shape)]
    for i, spec in enumerate(specs):
        if isinstance(spec, ConvPoolSpec) and len(out[-1]) != 3:
            raise ValueError(
                f"layer {i + 1} ({spec!r}) needs (channels, height, width) input, got {out[-1]}: "
                f"set network.input (e.g. [1, 28, 28]) and put conv layers before dense ones"
            )
        try:
            out.append(spec.out_shape(out[-1]))
        except ValueError as e:
            raise ValueError(f"layer {i + 1} ({spec!r}): {e}") from None
    if not specs or not isinstance(specs[-1], DenseSpec):
        raise ValueError("the last layer must be dense (the output layer, before the cost's softmax/sigmoid)")
    return out


class Network:
    """Layers plus cost. All parameters live in one flat buffer (and all gradients in another),
    each layer holding views into them, so the optimizer updates everything in one vector step.
    (`Network.of_views` makes one over arrays held elsewhere: no flat buffers, stepped array by array.)"""

    flat_params: np.ndarray | None
    flat_grads: np.ndarray | None

    def __init__(self, layers: Sequence[Dense | ConvStack], cost: Cost) -> None:
        self.layers, self.cost = list(layers), cost
        arrays = [layer.params for layer in self.layers]
        # A population axis is the leading axes of the (dense) output layer's weights beyond the matrix.
        self.lead: Shape = _weights(self.layers[-1])[0].shape[:-2]
        # Array by array, each (with its population axis) one contiguous block: a population's
        # weights of a layer are then one (K * n_out, n_in) matrix (see hpexp.nn.layers).
        sizes = [a.size for pair in arrays for a in pair]
        self.flat_params = flat_params = np.empty(sum(sizes), arrays[-1][0].dtype)
        self.flat_grads = flat_grads = np.zeros_like(flat_params)
        offsets = iter(np.cumsum([0, *sizes]).tolist())
        start = next(offsets)
        for layer, pair in zip(self.layers, arrays, strict=True):
            bound: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
            for a in pair:
                end = next(offsets)
                p = flat_params[start:end].reshape(a.shape, copy=False)
                p[...] = a
                bound[0].append(p)
                bound[1].append(flat_grads[start:end].reshape(a.shape, copy=False))
                start = end
            layer.bind(*bound)

    @classmethod
    def of_views(cls, layers: Sequence[Dense | ConvStack], cost: Cost) -> Network:
        """A network whose layers keep the arrays they hold (views into another network, e.g. some
        members of a population, see hpexp.nn.population.parts): training it changes those arrays."""
        network = cls.__new__(cls)
        network.layers, network.cost = list(layers), cost
        network.lead = _weights(network.layers[-1])[0].shape[:-2]
        network.flat_params = network.flat_grads = None
        return network

    @classmethod
    def create(
        cls,
        sizes: Sequence[int],
        activation: Activation,
        cost: Cost,
        init: Initializer,
        rng: np.random.Generator,
        dtype: str = "float32",
        population: int | None = None,
    ) -> Network:
        """Draw the weights of a `sizes[0]-sizes[1]-...-sizes[-1]` network (K members if `population`)."""
        lead = () if population is None else (population,)
        specs = [DenseSpec(n) for n in sizes[1:]]
        layers = [
            spec.build((n_in,), activation, init, rng, dtype, output=i == len(specs) - 1, lead=lead)
            for i, (n_in, spec) in enumerate(zip(sizes[:-1], specs, strict=True))
        ]
        return cls(layers, cost)

    @classmethod
    def build(
        cls,
        input_shape: Shape,
        specs: Sequence[LayerSpec],
        activation: Activation,
        cost: Cost,
        init: Initializer,
        rng: np.random.Generator,
        dtype: str = "float32",
    ) -> Network:
        """Draw the weights of the layers `specs` describe, in order, on inputs of `input_shape`.

        Consecutive conv-pool layers become one ConvStack taking and returning flat rows."""
        in_shapes = shapes(input_shape, specs)
        layers: list[Dense | ConvStack] = []
        convs: list[Any] = []
        stack_in = in_shapes[0]
        for i, spec in enumerate(specs):
            if isinstance(spec, ConvPoolSpec):
                if not convs:
                    stack_in = in_shapes[i]
                convs.append(spec.build(in_shapes[i], activation, init, rng, dtype))
                continue
            if convs:
                layers.append(ConvStack(convs, stack_in))
                convs = []
            layers.append(spec.build(in_shapes[i], activation, init, rng, dtype, output=i == len(specs) - 1))
        return cls(layers, cost)

    @property
    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in layer.grads]

    @property
    def weights(self) -> list[np.ndarray]:
        """The arrays a regularizer acts on: weights only, never biases (the book's convention).

        Each is a matrix (n_out, n_in) whose rows are the units' incoming weights; conv filters
        appear as views (filters, channels * kh * kw) of their parameters, so a penalty, its gradient
        and a max-norm constraint act on them in place."""
        return [w for layer in self.layers for w in _weights(layer)]

    @property
    def weight_grads(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in _weights(layer, grads=True)]

    def logits(self, x: np.ndarray, masks: Masks | None = None) -> np.ndarray:
        """The output layer's weighted input z^L, without keeping anything for backward.

        `masks[i]`, if given and not None, multiplies layer i's input: network3-style dropout scales
        by the keep probability at evaluation, and gradient checks pass a fixed dropout mask."""
        for i, layer in enumerate(self.layers):
            if masks is not None and masks[i] is not None:
                x = x * masks[i]
            x = layer.infer(x)
        return x

    def backprop(
        self,
        x: np.ndarray,
        y: np.ndarray,
        masks: Masks | None = None,
        scale: float | np.ndarray = 1.0,
        factored: Collection[int] = (),
    ) -> None:
        """Fill every layer's gradients of the mean cost over the mini-batch (x, y), times `scale`.

        Training passes the learning rate as `scale` (one per member of a population, shape (K, 1, 1)):
        multiplying the output error, a few numbers, spares the optimizer a pass over every gradient.
        With dropout `masks` (one multiplier per layer input, or None), layer i sees x_i * mask_i,
        so the error passed down to the layer below is multiplied by the same mask.
        `factored`: the dense layers (by index) whose weight gradients are left as products
        (`products`) for plain SGD to step by, not formed."""
        masks = masks if masks is not None else [None] * len(self.layers)
        for layer, mask in zip(self.layers, masks, strict=True):
            x = layer.forward(x if mask is None else x * mask)
        delta: Any = self.cost.delta(x, y)  # becomes None below the first layer
        delta *= scale / y.shape[-1]
        for i in range(len(self.layers) - 1, -1, -1):
            delta = self.layers[i].backward(delta, i > 0, i in factored)
            if delta is not None and masks[i] is not None:
                delta *= masks[i]

    def products(self, factored: Collection[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
        """After a backprop `factored` so: (w, a, b, compiled) per such layer, its weights' gradient
        a^T b and whether the compiled kernel steps by it (hpexp.nn.optimizers.descend)."""
        return [p for i in factored for p in self.layers[i].products]  # type: ignore[union-attr]

    def formed(self, factored: Collection[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The parameters whose gradients a backprop `factored` so still forms (all but those
        layers' weights), and those gradients."""
        left = [_weights(self.layers[i])[0] for i in factored]
        kept = [i for i, p in enumerate(self.params) if not any(p is w for w in left)]
        return [self.params[i] for i in kept], [self.grads[i] for i in kept]

    def input_shapes(self, m: int) -> list[tuple[int, ...]]:
        """The shape of every layer's input for a mini-batch of m examples (dropout mask shapes):
        flat rows (..., m, n_in) for dense layers and conv stacks alike."""
        return [(*self.lead, m, _n_in(layer)) for layer in self.layers]


def _n_in(layer: Dense | ConvStack) -> int:
    return layer.n_in if isinstance(layer, ConvStack) else layer.w.shape[-1]


def _weights(layer: Dense | ConvStack, grads: bool = False) -> list[np.ndarray]:
    if isinstance(layer, ConvStack):
        return layer.weight_grads if grads else layer.weights
    return [layer.gw if grads else layer.w]
