"""``fastconv.set_autotune`` on the numba_cuda backend, its kernels run by the CUDA simulator.

A stand-in clock makes one kernel the fastest (by the kernels a timed call launches), so each
test checks that the tuned call matches the oracle, that the arm launching that kernel was
chosen, that arms launching alike were timed once, and that the next call of the problem
launches the chosen kernel without timing.  The real clock (CUDA events on the launch
stream) runs too.
"""

import numpy as np
import pytest
from numba import cuda

from fastconv import reference
from fastconv.backends import _tuning
from fastconv.backends import numba_cuda as backend
from fastconv.backends.numba_cuda import _launch, autotune, conv, deform, roi


@pytest.fixture
def prefer(monkeypatch):
    """``prefer(predicate)``: the clock reports 0.1 ms for a timed call that launches a kernel
    for which ``predicate(kernel)`` holds and 1 ms for the others.  Returns the state:
    ``timed`` (clock readings) and ``launched`` (every kernel launched, in order)."""
    state = {"predicate": None, "timed": 0, "launched": []}

    def recording_launch(kernel, *args, **kwargs):
        state["launched"].append(kernel)
        _launch.launch(kernel, *args, **kwargs)

    class Clock:
        @staticmethod
        def device():
            return 0

        @staticmethod
        def capturing():
            return False

        @staticmethod
        def time_ms(fn):
            start = len(state["launched"])
            fn()
            state["timed"] += 1
            return 0.1 if any(map(state["predicate"], state["launched"][start:])) else 1.0

    for module in (conv, deform, roi):
        monkeypatch.setattr(module, "launch", recording_launch)
    monkeypatch.setattr(autotune, "clock", lambda: Clock)
    monkeypatch.setattr(autotune, "_choices", {})
    monkeypatch.setattr(autotune, "ROUNDS", 1)  # the simulator is slow; the clock is exact
    monkeypatch.setattr(_tuning, "_enabled", True)

    def set_predicate(predicate):
        state["predicate"] = predicate
        return state

    return set_predicate


def _named(fragment):
    return lambda kernel: fragment in kernel.py_func.__name__


def _is(get_kernel):
    """A predicate true for one kernel object (looked up when called: the launch settings the
    session fixture set decide the tile shapes)."""
    return lambda kernel: kernel is get_kernel()


def _gemm(module, which, index=None):
    def get():
        tiles = getattr(_launch.settings, f"tiles_{which}")
        if module is conv:
            return conv._gemm_kernels(np.float32, tiles)[index]
        return deform._gemm_kernel(np.float32, tiles)
    return _is(get)


def _dev(a):
    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def _cases(rng):
    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    boxes = np.array([[0, 1.0, 2.0, 9.5, 7.0], [1, 0.0, 0.0, 10.0, 8.0],
                      [1, 3.2, 1.1, 5.0, 6.6]], np.float32)
    conv_p = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    return [
        # (op, backend args, backend params, oracle call, what the clock favours,
        #  distinct plans)
        ("conv2d", (r(1, 3, 4, 5), r(6, 3, 3, 3), r(6)),
         dict(conv_p, groups=1, out_hw=(4, 5)),
         lambda x, w, b: reference.conv2d(x, w, b, padding=1),
         _gemm(conv, "wide", 0), 4),  # the rules' grouped kernel, direct, narrow and wide GEMM
        ("conv2d", (r(2, 4, 9, 7), r(4, 1, 3, 3), None),
         dict(conv_p, groups=4, out_hw=(9, 7)),
         lambda x, w, b: reference.conv2d(x, w, b, padding=1, groups=4),
         _named("conv2d_direct"), 2),  # depthwise (the rules, and its own arm), direct
        ("conv_transpose2d", (r(1, 3, 3, 2), r(3, 4, 4, 4), r(4)),
         dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1, out_hw=(6, 4)),
         lambda x, w, b: reference.conv_transpose2d(x, w, b, stride=2, padding=1),
         _gemm(conv, "wide", 1), 3),
        ("deform_conv2d", (r(1, 3, 4, 5), r(1, 18, 4, 5, scale=1.5), r(4, 3, 3, 3), None,
                           rng.uniform(0, 1, (1, 9, 4, 5)).astype(np.float32)),
         dict(conv_p, groups=1, offset_groups=1, out_hw=(4, 5)),
         lambda x, o, w, b, m: reference.deform_conv2d(x, o, w, b, padding=1, mask=m),
         _gemm(deform, "narrow"), 3),
        ("roi_align", (r(2, 5, 9, 11), boxes),
         dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True),
         lambda x, b: reference.roi_align(x, b, (3, 2), 0.5, 2, True),
         _is(lambda: roi._align_kernel(np.float32, 8)), 3),  # the rules' 2 per thread, 1, 8
    ]


@pytest.mark.parametrize("index", range(5))
def test_tuned_calls_match_the_oracle_and_reuse_the_choice(prefer, index):
    op, arrays, params, oracle, favoured, n_distinct = _cases(np.random.default_rng(5))[index]
    state = prefer(favoured)
    fn = getattr(backend, op)
    want = oracle(*arrays)
    got = fn(*map(_dev, arrays), **params).copy_to_host()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (entry,) = autotune.choices()
    assert entry["op"] == op and entry["ms"][entry["label"]] == 0.1, entry
    assert len(entry["ms"]) == n_distinct, entry
    assert len(entry["ms"]) + len(entry["same_as"]) == len(autotune.ARMS[op]), entry
    assert state["timed"] == 2 * n_distinct  # one untimed and ROUNDS (1) timed runs each
    # the chosen arm's kernel is launched once more for the output, then on the next call
    state["launched"].clear()
    again = fn(*map(_dev, arrays), **params).copy_to_host()
    assert state["timed"] == 2 * n_distinct  # remembered: nothing timed
    first, *rest = state["launched"]
    assert favoured(first)
    # conv_transpose2d's GEMM is followed by its exact pass for inf/NaN weights (which
    # finds none here and exits)
    assert [k.py_func.__name__ for k in rest] == (
        ["nonfinite_blocks", "conv_transpose2d_direct"] if op == "conv_transpose2d" else [])
    np.testing.assert_array_equal(again, got)


def test_off_launches_the_rules_choice_untimed(prefer, monkeypatch):
    monkeypatch.setattr(_tuning, "_enabled", False)
    state = prefer(_named("conv2d_direct"))
    op, arrays, params, oracle, *_ = _cases(np.random.default_rng(5))[0]
    got = backend.conv2d(*map(_dev, arrays), **params).copy_to_host()
    np.testing.assert_allclose(got, oracle(*arrays), rtol=1e-4, atol=1e-4)
    assert state["timed"] == 0 and autotune.choices() == []
    assert [k.py_func.__name__ for k in state["launched"]] == ["conv2d_grouped"]  # Kg < 12


def test_forced_paths_fall_back_to_the_rules_where_they_do_not_suit():
    s = _launch.settings
    assert _launch.path_tiles("direct", 64, 9, 100, 1) == (None, False)
    assert _launch.path_tiles("wide", 64, 9, 100, 1) == (s.tiles_wide, False)
    assert _launch.path_tiles("narrow", 64, 9, 100, 1) == (s.tiles_narrow, False)
    rules = _launch.choose_tiles(1, 9, 100, 1)
    assert _launch.path_tiles("wide", 1, 9, 100, 1) == (rules, True)  # 1 of 8 rows
    assert _launch.path_tiles("narrow", 64, 0, 100, 1)[1]  # no reduction
    assert _launch.path_tiles("depthwise", 64, 9, 100, 1) == (
        _launch.choose_tiles(64, 9, 100, 1), True)


def test_the_real_clock_times_work_on_the_launch_stream():
    ran = []
    ms = autotune.clock().time_ms(lambda: ran.append(1))
    assert ran == [1] and isinstance(ms, float)  # (the simulator's events report -1.0)
    assert autotune.clock().device() == 0 and autotune.clock().capturing() in (False, True)
