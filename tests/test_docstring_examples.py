"""The examples of the docstrings, the README and docs/*.md run, and print what they say.

Every module of the package whose docstrings hold ``>>>`` examples is listed (a test keeps
the list complete); everything runs on the CPU backend, so it holds on any machine.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
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


def _python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_readme_example_runs_and_its_shape_comments_hold():
    (block,) = _python_blocks(PACKAGE.parent / "README.md")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["up"].shape == (1, 32, 64, 64)
    assert scope["crops"].shape == scope["pooled"].shape == (2, 64, 7, 7)
    x, w = scope["x"], scope["w"]
    aspp = fastconv.conv2d(x, w, padding=6, dilation=6)
    assert aspp.shape == (1, 64, 32, 32)
    np.testing.assert_allclose(aspp, scope["ref"], rtol=1e-4, atol=1e-3)


def test_docs_doctest_blocks():
    attempted = 0
    for path in sorted((PACKAGE.parent / "docs").glob("*.md")):
        for i, block in enumerate(_python_blocks(path)):
            if ">>> " not in block:
                continue
            test = doctest.DocTestParser().get_doctest(block, {"fastconv": fastconv, "np": np},
                                                       f"{path.name}[{i}]", str(path), 0)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test)
            assert runner.failures == 0, f"{path.name} block {i} failed"
            attempted += runner.tries
    assert attempted > 0
