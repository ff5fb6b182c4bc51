"""A plain per-example backpropagation, written from the book's algorithm (chapter 2), as an oracle.

Column vectors and the book's layout (w of shape (n_out, n_in)), one example at a time, no
vectorization and nothing imported from hpexp: the vectorized engine must agree with it.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACTIVATIONS = {
    "sigmoid": (sigmoid, lambda z: sigmoid(z) * (1 - sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
}


def output_delta(cost, z, y):
    """dC_x/dz^L for one example, the book's equation (BP1) for each cost."""
    if cost == "quadratic":
        return (sigmoid(z) - y) * sigmoid(z) * (1 - sigmoid(z))
    if cost == "cross_entropy":
        return sigmoid(z) - y
    if cost == "log_likelihood":
        e = np.exp(z - z.max())
        return e / e.sum() - y
    raise ValueError(cost)


def backprop(weights, biases, x, y, activation, cost):
    """Gradients (nabla_b, nabla_w) of C_x for one example x (column) with one-hot target y."""
    f, f_prime = ACTIVATIONS[activation]
    a, activations, zs = x, [x], []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        z = w @ a + b
        zs.append(z)
        a = z if i == len(weights) - 1 else f(z)  # the output nonlinearity belongs to the cost
        activations.append(a)
    delta = output_delta(cost, zs[-1], y)
    nabla_b = [np.zeros_like(b) for b in biases]
    nabla_w = [np.zeros_like(w) for w in weights]
    nabla_b[-1], nabla_w[-1] = delta, delta @ activations[-2].T
    for layer in range(2, len(weights) + 1):
        delta = (weights[-layer + 1].T @ delta) * f_prime(zs[-layer])
        nabla_b[-layer] = delta
        nabla_w[-layer] = delta @ activations[-layer - 1].T
    return nabla_b, nabla_w


def sgd_epoch(weights, biases, x, y, order, batch_size, eta, lmbda, activation, cost):
    """One epoch of network2's update_mini_batch over `order`; returns new (weights, biases)."""
    n = len(order)
    weights, biases = [w.copy() for w in weights], [b.copy() for b in biases]
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        sum_b = [np.zeros_like(b) for b in biases]
        sum_w = [np.zeros_like(w) for w in weights]
        for i in batch:
            target = np.zeros((weights[-1].shape[0], 1))
            target[y[i]] = 1.0
            nb, nw = backprop(weights, biases, x[i].reshape(-1, 1), target, activation, cost)
            sum_b = [s + g for s, g in zip(sum_b, nb, strict=True)]
            sum_w = [s + g for s, g in zip(sum_w, nw, strict=True)]
        m = len(batch)
        weights = [(1 - eta * lmbda / n) * w - eta / m * g for w, g in zip(weights, sum_w, strict=True)]
        biases = [b - eta / m * g for b, g in zip(biases, sum_b, strict=True)]
    return weights, biases
