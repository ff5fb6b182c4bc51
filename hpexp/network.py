"""A feed-forward network: a stack of layers ending in a linear output layer, and the cost that owns
the output nonlinearity (sigmoid or softmax), as in the book's network2.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpexp.activations import Activation, Identity
from hpexp.costs import Cost
from hpexp.init import Initializer
from hpexp.layers import Dense

Masks = Sequence[np.ndarray | float | None]


class Network:
    """Layers plus cost. All parameters live in one flat buffer (and all gradients in another),
    each layer holding views into them, so the optimizer updates everything in one vector step."""

    def __init__(self, layers: Sequence[Dense], cost: Cost) -> None:
        self.layers, self.cost = list(layers), cost
        arrays = [layer.params for layer in self.layers]
        lead = arrays[0][0].shape[:-2]
        sizes = [int(np.prod(a.shape[len(lead) :])) for pair in arrays for a in pair]
        dtype = arrays[0][0].dtype
        self.flat_params = np.empty((*lead, sum(sizes)), dtype)
        self.flat_grads = np.zeros_like(self.flat_params)
        offsets = np.cumsum([0, *sizes])
        views = iter(range(len(sizes)))
        for layer, pair in zip(self.layers, arrays, strict=True):
            bound: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
            for a in pair:
                i = next(views)
                chunk = (..., slice(offsets[i], offsets[i + 1]))
                p, g = (
                    self.flat_params[chunk].reshape(a.shape),
                    self.flat_grads[chunk].reshape(a.shape),
                )
                if not (np.shares_memory(p, self.flat_params) and np.shares_memory(g, self.flat_grads)):
                    raise AssertionError("parameter views must share the flat buffers")
                p[...] = a
                bound[0].append(p)
                bound[1].append(g)
            layer.bind(*bound)

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
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            w = init.weights((*lead, n_in, n_out), rng).astype(dtype)
            b = init.biases((*lead, 1, n_out), rng).astype(dtype)
            last = i == len(sizes) - 2
            layers.append(Dense(w, b, Identity() if last else activation))
        return cls(layers, cost)

    @property
    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in layer.grads]

    @property
    def weights(self) -> list[np.ndarray]:
        """The arrays a regularizer acts on: weights only, never biases (the book's convention)."""
        return [layer.w for layer in self.layers]

    @property
    def weight_grads(self) -> list[np.ndarray]:
        return [layer.gw for layer in self.layers]

    def logits(self, x: np.ndarray, masks: Masks | None = None) -> np.ndarray:
        """The output layer's weighted input z^L, without keeping anything for backward.

        `masks[i]`, if given and not None, multiplies layer i's input: network3-style dropout scales
        by the keep probability at evaluation, and gradient checks pass a fixed dropout mask."""
        for i, layer in enumerate(self.layers):
            if masks is not None and masks[i] is not None:
                x = x * masks[i]
            x = layer.infer(x)
        return x

    def backprop(self, x: np.ndarray, y: np.ndarray, masks: Masks | None = None) -> None:
        """Fill every layer's gradients of the mean cost over the mini-batch (x, y).

        With dropout `masks` (one multiplier per layer input, or None), layer i sees x_i * mask_i,
        so the error passed down to the layer below is multiplied by the same mask."""
        if masks is not None:
            return self._backprop_masked(x, y, masks)
        for layer in self.layers:
            x = layer.forward(x)
        delta = self.cost.delta(x, y)
        delta *= 1.0 / y.shape[-1]
        for i in range(len(self.layers) - 1, -1, -1):
            delta = self.layers[i].backward(delta, propagate=i > 0)

    def _backprop_masked(self, x: np.ndarray, y: np.ndarray, masks: Masks) -> None:
        for layer, mask in zip(self.layers, masks, strict=True):
            x = layer.forward(x if mask is None else x * mask)
        delta = self.cost.delta(x, y)
        delta *= 1.0 / y.shape[-1]
        for i in range(len(self.layers) - 1, -1, -1):
            delta = self.layers[i].backward(delta, propagate=i > 0)
            if delta is not None and masks[i] is not None:
                delta *= masks[i]

    def input_shapes(self, m: int) -> list[tuple[int, ...]]:
        """The shape of every layer's input for a mini-batch of m examples (dropout mask shapes)."""
        return [(*layer.w.shape[:-2], m, layer.w.shape[-2]) for layer in self.layers]
