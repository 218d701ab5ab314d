"""``fastconv.set_autotune``: the cupy backend's per-problem choice of kernel paths.

The choosing is tested here with stand-in launches and timings (no GPU, no CuPy); the
emulated backend runs every op with autotuning on against the oracle
(``tests/cupy_emu/test_autotune_emulated.py``), and ``tests/test_gpu_extra.py`` on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv.backends import _tuning
from fastconv.backends.cupy import _module, autotune, conv, roi, variants


@pytest.fixture
def tuner(monkeypatch):
    """Autotuning on, no choices, device 0, not capturing; ``tuner.ms`` maps an arm's label
    to the time the stand-in clock reports for it (default 1.0)."""

    class Tuner:
        ms: dict = {}
        launched: list = []
        timed = 0
        device = 0

    t = Tuner()
    t.ms, t.launched = {}, []

    def time_ms(fn):
        t.timed += 1
        fn()
        return t.ms.get(autotune.label(t.launched[-1]), 1.0)

    monkeypatch.setattr(_module, "device", lambda: t.device)
    monkeypatch.setattr(_module, "time_ms", time_ms)
    monkeypatch.setattr(_module, "capturing", lambda: False)
    monkeypatch.setattr(autotune, "_choices", {})
    monkeypatch.setattr(_tuning, "_enabled", True)
    return t


def _launch(t):
    def launch(arm):
        t.launched.append(arm)
    return launch


def _default(op):
    now = variants.current()
    return {name: now[name] for name in autotune.ARMS[op][0]}


def test_off_launches_the_module_settings_once(tuner):
    autotune.set_enabled(False)
    autotune.run("conv2d", ("k",), _launch(tuner))
    assert tuner.launched == [None] and tuner.timed == 0 and autotune.choices() == []


def test_the_fastest_arm_is_chosen_once_and_remembered(tuner):
    arms = autotune._arms("conv_transpose2d")
    assert arms[0] == _default("conv_transpose2d") and len(arms) == 5
    fast = arms[3]
    tuner.ms = {autotune.label(fast): 0.2, autotune.label(arms[1]): 0.5}
    autotune.run("conv_transpose2d", ("k",), _launch(tuner))
    # every arm once untimed and ROUNDS times timed, interleaved; then the chosen arm
    per_round = len(arms)
    assert tuner.timed == (1 + autotune.ROUNDS) * per_round
    assert tuner.launched[:per_round] == arms and tuner.launched[-1] == fast
    (entry,) = autotune.choices()
    assert entry["op"] == "conv_transpose2d" and entry["key"] == ("k",) and entry["device"] == 0
    assert entry["arm"] == fast and entry["label"] == autotune.label(fast)
    assert entry["ms"][autotune.label(fast)] == 0.2 and len(entry["ms"]) == 5
    # a second call of the problem: one launch of the choice, nothing timed
    tuner.launched.clear()
    autotune.run("conv_transpose2d", ("k",), _launch(tuner))
    assert tuner.launched == [fast] and tuner.timed == (1 + autotune.ROUNDS) * per_round


def test_another_problem_or_device_is_tuned_again(tuner):
    autotune.run("roi_pool", (1,), _launch(tuner))
    autotune.run("roi_pool", (2,), _launch(tuner))
    tuner.device = 1
    autotune.run("roi_pool", (1,), _launch(tuner))
    assert [(c["device"], c["key"]) for c in autotune.choices()] == [(0, (1,)), (0, (2,)),
                                                                      (1, (1,))]
    autotune.clear()
    assert autotune.choices() == []


def test_arms_planning_alike_are_timed_once(tuner):
    arms = autotune._arms("conv2d")
    # a stand-in signature: only DEPTHWISE_TILED matters (as for a depthwise conv2d)
    def signature(arm):
        return arm["DEPTHWISE_TILED"]

    direct = next(a for a in arms if not a["DEPTHWISE_TILED"])
    tuner.ms = {autotune.label(direct): 0.5}
    autotune.run("conv2d", ("k",), _launch(tuner), signature)
    (entry,) = autotune.choices()
    assert list(entry["ms"]) == [autotune.label(arms[0]), autotune.label(direct)]
    assert entry["arm"] == direct
    assert tuner.timed == (1 + autotune.ROUNDS) * 2
    assert entry["same_as"] == {autotune.label(a): autotune.label(arms[0])
                                for a in arms[1:] if a["DEPTHWISE_TILED"]}
    assert set(entry["same_as"]) | set(entry["ms"]) == {autotune.label(a) for a in arms}


def test_a_problem_with_one_distinct_plan_is_not_timed(tuner):
    autotune.run("roi_pool", ("k",), _launch(tuner), lambda arm: "same")
    (entry,) = autotune.choices()
    arms = autotune._arms("roi_pool")
    assert tuner.timed == 0 and tuner.launched == [arms[0]]
    assert entry["arm"] == arms[0] and entry["ms"] == {}
    assert len(entry["same_as"]) == len(arms) - 1


def test_an_arm_whose_signature_fails_is_timed_like_any_other(tuner):
    arms = autotune._arms("roi_align")
    odd = autotune.label(arms[2])

    def signature(arm):
        if autotune.label(arm) == odd:
            raise ValueError("no plan")
        return "same"

    tuner.ms = {odd: 0.5}
    autotune.run("roi_align", ("k",), _launch(tuner), signature)
    (entry,) = autotune.choices()
    assert list(entry["ms"]) == [autotune.label(arms[0]), odd] and entry["arm"] == arms[2]


def test_a_near_tie_keeps_the_module_settings(tuner):
    arms = autotune._arms("roi_align")
    tuner.ms = {autotune.label(arms[0]): 1.0, autotune.label(arms[2]): 0.99}
    autotune.run("roi_align", ("k",), _launch(tuner))
    assert autotune.choices()[0]["arm"] == arms[0]
    tuner.ms[autotune.label(arms[2])] = 0.9
    autotune.run("roi_align", ("other",), _launch(tuner))
    assert autotune.choices()[1]["arm"] == arms[2]


def test_the_module_settings_arm_is_tried_first(tuner, monkeypatch):
    monkeypatch.setattr(conv, "SPLIT_K", 4)  # not one of ARMS' values
    arms = autotune._arms("conv2d")
    assert arms[0] == {"SPLIT_K": 4, "DEPTHWISE_TILED": True, "GEMM_VEC": False,
                       "DEPTHWISE_LOADS": 1}
    assert len(arms) == 1 + len(autotune.ARMS["conv2d"])
    monkeypatch.setattr(conv, "SPLIT_K", 1)
    assert autotune._arms("conv2d") == autotune.ARMS["conv2d"]


def test_a_failing_arm_is_skipped_with_a_warning(tuner):
    arms = autotune._arms("deform_conv2d")
    broken = autotune.label(arms[2])

    def launch(arm):
        if autotune.label(arm) == broken:
            raise RuntimeError("no such kernel")
        tuner.launched.append(arm)

    tuner.ms = {broken: 0.01}
    with pytest.warns(RuntimeWarning, match="skipped.*no such kernel"):
        autotune.run("deform_conv2d", ("k",), launch)
    (entry,) = autotune.choices()
    assert entry["skipped"] == {broken: "RuntimeError: no such kernel"}
    assert broken not in entry["ms"] and entry["arm"] == arms[0]
    assert arms[2] not in tuner.launched


def test_the_module_settings_error_is_raised_as_without_tuning(tuner):
    def launch(arm):
        raise ValueError("too large")

    with pytest.raises(ValueError, match="too large"):
        autotune.run("conv_transpose2d", ("k",), launch)
    assert autotune.choices() == []


def test_nothing_is_timed_while_a_graph_is_captured(tuner, monkeypatch):
    monkeypatch.setattr(_module, "capturing", lambda: True)
    autotune.run("conv2d", ("k",), _launch(tuner))
    assert tuner.launched == [None] and tuner.timed == 0 and autotune.choices() == []


def test_arms_name_real_settings_and_start_with_the_shipped_defaults():
    """The first arm per op is the backend's default (``bench/ab_cupy_variants.py`` reads it
    so), every arm sets the same settings, and no two arms are alike."""
    defaults = variants.current()
    for op, arms in autotune.ARMS.items():
        assert hasattr(fastconv, op)
        assert all(defaults[name] == value for name, value in arms[0].items()), op
        assert all(a.keys() == arms[0].keys() for a in arms), op
        assert len({autotune.label(a) for a in arms}) == len(arms), op


def test_set_autotune_returns_the_previous_state_and_checks_its_argument(monkeypatch):
    monkeypatch.setattr(_tuning, "_enabled", False)
    assert fastconv.set_autotune(True) is False and autotune.enabled()
    assert fastconv.set_autotune(np.bool_(False)) is True and not autotune.enabled()
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="enabled must be a bool"):
            fastconv.set_autotune(bad)
    assert not autotune.enabled()


def test_box_counts_are_keyed_by_powers_of_two():
    assert [_tuning.box_bucket(k) for k in (1, 2, 3, 4, 5, 512, 513)] == [1, 2, 4, 4, 8, 512, 1024]


class _Arr:  # shape/dtype stand-in for a cupy array (the planners only read these)
    def __init__(self, shape, dtype="float32"):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def test_an_arm_overrides_only_the_settings_it_names(monkeypatch):
    x, out = _Arr((1, 64, 8, 8)), _Arr((1, 8, 16, 16))
    w = _Arr((64, 8, 4, 4))
    args = (x, w, None, out, (2, 2), (1, 1), (1, 1), 1, 100)
    name = conv.plan_conv_transpose2d(*args)[0][0]
    assert name.startswith("fc::conv_transpose2d_direct")
    gemm = conv.plan_conv_transpose2d(*args, arm={"TRANSPOSED_GEMM": True})[0][0]
    assert gemm == "fc::conv_transpose2d_gemm<float, 32, false>"
    monkeypatch.setattr(conv, "GEMM_VEC", True)  # not named by the arm: the module's value
    gemm = conv.plan_conv_transpose2d(*args, arm={"TRANSPOSED_GEMM": True})[0][0]
    assert gemm == "fc::conv_transpose2d_gemm<float, 32, true>"
    rois, pooled = _Arr((3, 5)), _Arr((3, 16, 2, 2))
    x = _Arr((1, 16, 8, 8))
    assert roi.plan_roi_pool(x, rois, pooled, 1.0, 100)[0][0].endswith(", false>")
    assert roi.plan_roi_pool(x, rois, pooled, 1.0, 100,
                             arm={"ROI_BOX_GRID": True, "ROI_CB": 1})[0][0] == \
        "fc::roi_pool<float, 1, true>"
