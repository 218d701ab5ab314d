"""The Examples sections of the public docstrings run, and print what they say they print.

Every module of the package whose docstrings hold ``>>>`` examples is listed (the last test
keeps the list complete); they run on the CPU backend, so they hold on any machine.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import fastconv

PACKAGE = Path(fastconv.__file__).parent
MODULES = [
    "fastconv._autotune",
    "fastconv.backends.numba_cuda._resources",
    "fastconv.conv",
    "fastconv.deform",
    "fastconv.image",
    "fastconv.receptive",
    "fastconv.reference",
    "fastconv.roi",
    "fastconv.upsample",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


def test_every_module_with_examples_is_listed():
    with_examples = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py") if ">>> " in path.read_text(encoding="utf-8")
    }
    assert with_examples == set(MODULES)
