"""Every op of the cupy backend with autotuning on, its CUDA C run by the CPU emulator.

A stand-in clock makes one non-default arm the fastest (by the kernels it launches), so
each test checks three things: the tuned call's output matches the oracle, the arm
chosen is that one, and the next call of the problem launches its kernels untimed.
"""

import numpy as np
import pytest
from cupy_emu import emulator

import fastconv
from fastconv import reference
from fastconv.backends import _tuning
from fastconv.backends.cupy import _module, autotune

BACKEND = emulator.NAME


@pytest.fixture
def prefer(monkeypatch):
    """``prefer(fragment)``: the clock reports 0.1 ms for calls that launch a kernel whose
    name contains ``fragment`` and 1 ms for the others; returns the timing count."""
    state = {"fragment": None, "timed": 0}

    def time_ms(fn):
        before = dict(emulator.LAUNCHED)
        fn()
        state["timed"] += 1
        new = [k for k, n in emulator.LAUNCHED.items() if n != before.get(k, 0)]
        return 0.1 if any(state["fragment"] in k for k in new) else 1.0

    monkeypatch.setattr(_module, "time_ms", time_ms)
    monkeypatch.setattr(autotune, "_choices", {})
    monkeypatch.setattr(_tuning, "_enabled", True)
    monkeypatch.setattr(autotune, "ROUNDS", 1)  # the emulator is slow; the clock is exact

    def set_fragment(fragment):
        state["fragment"] = fragment
        return state

    return set_fragment


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _cases(rng, dtype):
    x = _rand(rng, (2, 16, 9, 11), dtype)
    xt = _rand(rng, (2, 8, 5, 6), dtype)
    xd = _rand(rng, (2, 8, 7, 8), dtype)
    offset = (rng.standard_normal((2, 18, 7, 8)) * 1.5).astype(dtype)
    mask = rng.uniform(0, 1, (2, 9, 7, 8)).astype(dtype)
    boxes = np.array([[0, 1.0, 2.0, 9.5, 7.0], [1, 0.0, 0.0, 10.0, 8.0],
                      [1, 3.2, 1.1, 5.0, 6.6]], dtype)
    return [
        # (op, arrays, params, fragment of the kernel name the clock favours)
        ("conv2d", dict(input=x, weight=_rand(rng, (32, 16, 3, 3), dtype),
                        bias=_rand(rng, (32,), dtype)), dict(padding=1, dilation=(2, 1)),
         ", true>"),  # the vector register tiles
        ("conv2d", dict(input=x, weight=_rand(rng, (16, 1, 3, 3), dtype)),
         dict(padding=1, groups=16), "conv2d_depthwise_direct"),
        ("conv_transpose2d", dict(input=xt, weight=_rand(rng, (8, 12, 4, 4), dtype),
                                  bias=_rand(rng, (12,), dtype)), dict(stride=2, padding=1),
         "conv_transpose2d_gemm"),
        ("deform_conv2d", dict(input=xd, offset=offset, weight=_rand(rng, (32, 8, 3, 3), dtype),
                               mask=mask), dict(padding=1),
         # the fused kernel; in float64 its sampling table would not fit in shared memory,
         # so the two-stage form with the vector tiles
         "deform_conv2d_gemm" if dtype != "float64" else ", true>"),
        ("roi_align", dict(input=x, boxes=boxes), dict(output_size=(3, 2), spatial_scale=0.5,
                                                       sampling_ratio=2, aligned=True),
         ", true>"),  # boxes on grid y
        ("roi_pool", dict(input=x, boxes=boxes), dict(output_size=(2, 3), spatial_scale=0.5),
         ", 1, "),  # one channel per thread
    ]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_tuned_calls_match_the_oracle_and_reuse_the_choice(prefer, dtype):
    rng = np.random.default_rng(7)
    tol = 2e-2 if dtype == "float16" else 1e-4
    for op, arrays, params, fragment in _cases(rng, dtype):
        state = prefer(fragment)
        timed = state["timed"]
        fn = getattr(fastconv, op)
        want = getattr(reference, op)(**arrays, **params)
        got = fn(**arrays, **params, backend=BACKEND)
        scale = max(float(np.abs(want).max()), 1.0)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=op)
        entry = autotune.choices()[-1]
        assert entry["op"] == op and entry["ms"][entry["label"]] == 0.1, entry
        # each distinct plan timed once untimed-warm and ROUNDS (1) times
        assert state["timed"] == timed + 2 * len(entry["ms"]), (op, entry)
        assert len(entry["ms"]) + len(entry["same_as"]) == len(autotune._arms(op)), entry
        if fragment == "conv2d_depthwise_direct":  # only DEPTHWISE_TILED and _LOADS matter
            assert len(entry["ms"]) == 3, entry
        timed = state["timed"]
        emulator.LAUNCHED.clear()
        again = fn(**arrays, **params, backend=BACKEND)
        assert state["timed"] == timed, op  # remembered: nothing timed
        assert any(fragment in k for k in emulator.LAUNCHED), (op, emulator.LAUNCHED)
        np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_arms_with_equal_signatures_plan_the_same_launches(monkeypatch, dtype):
    """The signatures autotuning compares are truthful: for every case, two arms have equal
    signatures exactly when their launches (kernel names, grids, blocks, shared memory and
    scalar arguments) are the same."""
    captured = {}

    def capture(op, key, launch, signature=None):
        captured.update(launch=launch, signature=signature)
        launch(None)

    monkeypatch.setattr(_tuning, "_enabled", True)
    monkeypatch.setattr(autotune, "run", capture)
    plans = []
    monkeypatch.setattr(_module, "run", lambda launches: plans.append(tuple(
        (name, grid, block, smem, tuple(a.item() for a in args if isinstance(a, np.generic)))
        for name, grid, block, smem, args in launches)))
    rng = np.random.default_rng(3)
    for op, arrays, params, _ in _cases(rng, dtype):
        getattr(fastconv, op)(**arrays, **params, backend=BACKEND)
        arms = autotune._arms(op)
        sigs, launched = [], []
        for arm in arms:
            sigs.append(captured["signature"](arm))
            plans.clear()
            captured["launch"](arm)
            (plan,) = plans
            launched.append(plan)
        for i in range(len(arms)):
            for j in range(i):
                assert (sigs[i] == sigs[j]) == (launched[i] == launched[j]), (op, arms[i], arms[j])
        assert len(set(sigs)) > 1, op  # every case has a real choice
