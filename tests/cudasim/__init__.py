"""Tests that run the numba.cuda kernels in the CUDA simulator (see conftest.py)."""
