"""The engine: a network's layers, costs, activations, initializers, regularizers and optimizer.

Imports NumPy only. Arrays are batch-major; dense weights are the book's (n_out, n_in), with a
leading population axis when K networks train together. `backward` fills gradients and only the
optimizer changes parameters.
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "Activation": "activations",
        "Sigmoid": "activations",
        "Tanh": "activations",
        "ReLU": "activations",
        "Identity": "activations",
        "sigmoid": "activations",
        "Cost": "costs",
        "Quadratic": "costs",
        "CrossEntropy": "costs",
        "LogLikelihood": "costs",
        "Initializer": "init",
        "Fan": "init",
        "Large": "init",
        "Default": "init",
        "He": "init",
        "Glorot": "init",
        "Network3": "init",
        "Dense": "layers",
        "Conv2D": "conv",
        "MaxPool": "conv",
        "L2Pool": "conv",
        "ConvPool": "conv",
        "Flatten": "conv",
        "ConvStack": "conv",
        "ConvPoolSpec": "conv",
        "Network": "network",
        "LayerSpec": "network",
        "DenseSpec": "network",
        "shapes": "network",
        "stack": "population",
        "stackable": "population",
        "select": "population",
        "member_params": "population",
        "stack_fields": "population",
        "Regularizer": "regularizers",
        "SGD": "optimizers",
    },
)
