"""Compiled kernels (numba, the optional `fast` extra) for the engine's hot data-movement loops.

The engine (hpexp.nn) imports NumPy only and stays the reference: it looks these kernels up at run
time (hpexp.nn.conv) and uses them when numba is installed, unless HPEXP_KERNELS=numpy. Each kernel
does the same arithmetic in the same order as its NumPy counterpart, so results are identical, and
tests compare the two. This package imports NumPy and numba only, never the rest of hpexp.
"""
