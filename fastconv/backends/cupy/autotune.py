"""Per-shape choice of the cupy backend's kernel paths by timing them (``fastconv.set_autotune``).

The optional paths of :mod:`.variants` (split-K, the phase GEMM for conv_transpose2d, the
vector register tiles, the fused deformable kernel, the RoI work layouts) each win on some
shapes and lose on others, so no single default suits every layer.  With autotuning on,
the first call of an op with a given problem (shapes, parameters, dtype, device) runs
every arm of :data:`ARMS` on the caller's stream (each distinct plan once: arms that
launch the same kernels with the same arguments for this problem are timed as one),
times each with CUDA events, and remembers the fastest; later calls with that problem
launch the remembered arm at the cost of one dict lookup.  This is what
``torch.backends.cudnn.benchmark = True`` does for cuDNN's algorithms, and it has the same
costs: the first call of each problem is slower (it synchronises the stream and runs the
op about ``1 + ROUNDS`` times per distinct arm, and may compile the optional kernels), and
problems whose shapes change call after call are tuned again and again -- except the RoI
ops, whose box count is rounded up to a power of two in the key, since detectors change it
every image.

Every arm computes the same result (each is tested against the oracle), so turning
autotuning on never changes an output beyond rounding, nor an error: the module settings'
own arm runs first, and an error there is raised as it would be without tuning.  Another
arm that fails is skipped with a ``RuntimeWarning``.  While the stream is capturing a CUDA
graph nothing is timed (that would synchronise inside the capture): an untuned problem then
runs the module settings' arm and is tuned at a later call.

This module holds the arms and the choices; the launchers pass an arm (a dict of
:mod:`.variants` setting names to values) to their ``plan_*`` functions.
"""

from __future__ import annotations

import sys
import threading
from types import MappingProxyType

from .. import _tuning
from . import _module

_ROI = [{"ROI_BOX_GRID": False, "ROI_CB": None}, {"ROI_BOX_GRID": True, "ROI_CB": None},
        {"ROI_BOX_GRID": True, "ROI_CB": 1}, {"ROI_BOX_GRID": False, "ROI_CB": 1},
        {"ROI_BOX_GRID": True, "ROI_CB": 4}]
#: op -> its arms (dicts of .variants setting names to values), the shipped defaults first;
#: tuning tries them after the module settings' present values (:func:`_arms`), and
#: ``bench/ab_cupy_variants.py`` times the same arms against the peer
ARMS = {
    "conv2d": [{"SPLIT_K": s, "DEPTHWISE_TILED": t, "GEMM_VEC": v, "DEPTHWISE_LOADS": n}
               for s, t, v, n in ((1, True, False, 1), (None, True, False, 1),
                                  (1, False, False, 1), (1, True, True, 1),
                                  (None, True, True, 1), (1, True, False, 4))],
    "deform_conv2d": [{"DEFORM_FUSED": f, "SPLIT_K": s, "GEMM_VEC": v}
                      for f, s, v in ((False, 1, False), (False, None, False), (True, 1, False),
                                      (True, None, False), (False, None, True),
                                      (True, 1, True), (True, None, True))],
    "conv_transpose2d": [{"TRANSPOSED_GEMM": g, "SPLIT_K": s, "GEMM_VEC": v}
                         for g, s, v in ((False, 1, False), (True, 1, False), (True, None, False),
                                         (True, 1, True), (True, None, True))],
    "roi_align": _ROI,
    "roi_pool": _ROI,
}
#: timed runs of each arm after one untimed run (which compiles or loads its kernels); the
#: rounds interleave the arms, and an arm's time is its fastest run
ROUNDS = 3
#: another arm replaces the module settings' only when at least this much faster (timing
#: noise must not flip a choice between equals)
MARGIN = 0.97

#: the arm of a plain call: every setting from its module (read-only)
NO_ARM = MappingProxyType({})

_choices: dict = {}  # (op, device, key) -> {"arm", "label", "ms", "skipped", "same_as"}
_lock = threading.Lock()

enabled = _tuning.enabled  # one switch for both GPU backends (fastconv.set_autotune)
set_enabled = _tuning.set_enabled
label = _tuning.label


def clock():
    """The tuner's clock (:mod:`.._tuning`): CuPy's device, stream-capture state and events."""
    return _module


def choices() -> list[dict]:
    """What has been tuned so far: one dict per problem, in the order they were tuned.

    Keys: ``op``, ``device``, ``key`` (the problem), ``arm`` (the settings chosen),
    ``label`` (the same, as text), ``ms`` (each timed arm's best time in milliseconds, by
    label; the first is the module settings' arm; empty when only one arm was distinct),
    ``skipped`` (arms that failed, by label, with the error) and ``same_as`` (arms not timed
    because they plan the same launches as an earlier arm: label -> that arm's label).
    """
    return _tuning.choices(_self)


def clear() -> None:
    """Forget every choice (the next call of each problem is tuned again)."""
    _tuning.clear(_self)


def run(op: str, key: tuple, launch, signature=None) -> None:
    """Run one call of ``op`` through :func:`.._tuning.run`: ``launch(arm)`` enqueues its
    kernels with ``arm``'s settings (``None``: the module settings); ``key`` identifies the
    problem and ``signature(arm)`` summarises what ``launch(arm)`` would enqueue, so arms that
    plan alike are timed once (e.g. split-K and the vector tiles change nothing for a
    depthwise conv2d)."""
    _tuning.run(_self, op, key, launch, signature)


def _arms(op: str) -> list[dict]:
    """The module settings' arm (their present values) and every other arm of ``op``."""
    from .variants import current

    now = current()
    first = {name: now[name] for name in ARMS[op][0]}
    return [first] + [arm for arm in ARMS[op] if arm != first]


_self = sys.modules[__name__]
