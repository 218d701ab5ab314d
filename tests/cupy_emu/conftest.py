"""The cupy backend's CUDA C kernels compiled for the CPU (see ``emulator.py``).

Collected only when ``FASTCONV_TEST_BACKENDS`` includes ``cupy_emulated``
(``tests/conftest.py`` then installs the emulator); ``tests/test_cupy_emulated.py``
runs these, and every test of the main suite that takes the ``backend``
fixture, in a process of their own with AddressSanitizer preloaded.
"""

import os

if "cupy_emulated" not in os.environ.get("FASTCONV_TEST_BACKENDS", "").split(","):
    collect_ignore_glob = ["test_*.py"]
