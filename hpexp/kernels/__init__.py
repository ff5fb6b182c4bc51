"""Compiled kernels (numba and SciPy's BLAS, the optional `fast` extra) for the engine's hot loops.

The engine (hpexp.nn) imports NumPy only and stays the reference: it looks these kernels up at run
time (hpexp.nn.compiled) and uses them when installed, unless HPEXP_KERNELS=numpy. Tests compare
each with its NumPy counterpart: bit for bit where the arithmetic is done in the same order (conv's
data movement and pooling), to rounding where the sums run in another (dense, blas, conv's filter
gradient), which the engine takes only where measured faster, in float32, or where the function is
approximated otherwise (activations and costs: float32's sigmoid and tanh, taken per layer where
measured faster, and the costs' output error, faster on every CPU measured).
This package imports NumPy, numba and SciPy only, never the rest of hpexp.
"""
