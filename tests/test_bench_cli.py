"""The ``python -m fastconv bench`` machinery on tiny cases: quick, and no peer needed.

Runs with the NumPy oracle (``--backend reference``) so nothing is JIT-compiled,
except one test that drives the real CPU backend on one tiny case.  The torch
parts skip when torch/torchvision are not installed.  The GPU path is driven on
the CPU with host timers standing in for CUDA events.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import bench_script

from fastconv import _bench, _cases

HAVE_TORCH = (importlib.util.find_spec("torch") is not None
              and importlib.util.find_spec("torchvision") is not None)
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None

BENCHMARKS_MD_CASES = [
    "dilated_aspp", "dilated_small", "grouped_resnext", "depthwise", "transposed_fcn",
    "transposed_decoder", "deform_dcnv2", "roi_align_fpn", "roi_align_mask", "roi_pool_fpn",
]

QUICK = ["--size", "tiny", "--repeat", "1", "--threads", "1", "--quick", "--no-progress"]


def test_cases_are_benchmarks_md():
    assert _cases.DEFAULT_CASES == BENCHMARKS_MD_CASES
    assert [c.name for c in _cases.select(None)] == BENCHMARKS_MD_CASES
    assert [c.name for c in _cases.select("roi_align")] == ["roi_align_fpn", "roi_align_mask"]
    with pytest.raises(ValueError, match="unknown case"):
        _cases.select("dilated_aspp,nope")


def test_case_inputs_and_costs():
    aspp = _cases.get("dilated_aspp")
    inp = aspp.inputs()
    assert inp.arrays["input"].shape == (1, 256, 64, 64)
    assert inp.arrays["input"].dtype == np.float32
    assert inp.params == {"stride": 1, "padding": 6, "dilation": 6, "groups": 1}
    assert aspp.cost()["flops"] == 2 * 256 * 64 * 64 * 256 * 9
    # seeded: the same inputs every time, different per seed
    np.testing.assert_array_equal(inp.arrays["weight"], aspp.inputs().arrays["weight"])
    assert not np.array_equal(inp.arrays["weight"], aspp.inputs(seed=1).arrays["weight"])
    fcn = _cases.get("transposed_fcn").cost()
    assert fcn["out_shape"] == (1, 21, 512, 512)
    dcn = _cases.get("deform_dcnv2").inputs("tiny")
    assert dcn.arrays["mask"].min() >= 0 and dcn.arrays["mask"].max() < 1
    boxes = _cases.get("roi_align_fpn").inputs().arrays["boxes"]
    assert boxes.shape == (512, 5)
    w, h = boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]
    assert w.min() >= 16 - 1e-3 and h.max() < 316 + 1e-3
    for case in _cases.CASES.values():
        for size in _cases.SIZES:
            cost = case.cost(size)
            assert cost["flops"] > 0 and cost["bytes"] > 0, (case.name, size)


def test_roi_pool_count_matches_brute_force():
    inp = _cases.get("roi_pool_fpn").inputs("tiny")
    x = inp.arrays["input"]
    # a max over each bin with a counter instead of the values: count the elements read
    ones = np.ones_like(x, dtype=np.float64)
    from fastconv import reference

    hits = 0
    for r in inp.arrays["boxes"]:
        out = reference.roi_pool(ones, r[None], inp.params["output_size"],
                                 inp.params["spatial_scale"])
        hits += int(out.sum())  # bins that read at least one element
    flops = _cases.get("roi_pool_fpn").cost("tiny")["flops"]
    assert flops >= hits


def test_cli_json_structure(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # restored after the test
    rc = _bench.main(["--cases", "dilated_small,roi_align_mask", "--backend", "reference",
                      "--peer", "none", "--json", str(out), "--markdown", str(md),
                      "--omp-passive", *QUICK])
    assert rc == 0
    text = capsys.readouterr().out
    assert "dilated_small" in text and "roi_align_mask" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "fastconv-bench/1"
    assert data["versions"]["fastconv"] and data["machine"]["cores"] >= 1
    assert data["machine"]["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert set(data["cases_info"]) == {"dilated_small", "roi_align_mask"}
    assert data["cases_info"]["dilated_small"]["target_cpu"] == 1.5
    block = data["cpu"]["threads"]["1"]
    assert block["ceiling"]["peak_gflops"] > 0 and block["ceiling"]["copy_gbs"] > 0
    entry = block["cases"]["roi_align_mask"]
    assert entry["peer"] is None and entry["peer_missing"]
    ref = entry["fastconv"]["reference"]
    assert ref["ms"] > 0 and ref["gflops"] > 0 and len(ref["samples_ms"]) == 1
    assert "ratio" not in ref
    assert "| case |" in md.read_text()
    # --load renders a saved run without running anything
    assert _bench.main(["--load", str(out)]) == 0
    assert "roi_align_mask" in capsys.readouterr().out


def test_cli_cpu_backend_tiny(tmp_path):
    """The real numba backend, interleaved with the oracle as the 'peer' of --oracle."""
    out = tmp_path / "cpu.json"
    rc = _bench.main(["--cases", "depthwise", "--backend", "cpu", "--peer", "none",
                      "--oracle", "--json", str(out), *QUICK])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["cpu"]["threads"]["1"]["cases"]["depthwise"]["fastconv"]["cpu"]["ms"] > 0
    oracle = data["oracle"]["cases"]["depthwise"]
    assert data["oracle"]["size"] == "tiny"
    assert oracle["max_rel_err"] < 1e-4 and oracle["speedup"] > 0


@pytest.mark.skipif(not HAVE_TORCH, reason="torch/torchvision not installed")
def test_cli_torch_peer(tmp_path):
    out = tmp_path / "torch.json"
    rc = _bench.main(["--cases", "grouped_resnext,deform_dcnv2,roi_pool_fpn", "--backend",
                      "reference", "--json", str(out), *QUICK])
    assert rc == 0
    cases = json.loads(out.read_text())["cpu"]["threads"]["1"]["cases"]
    for name, entry in cases.items():
        assert entry["peer"].startswith(("torch.", "torchvision.")), name
        ref = entry["fastconv"]["reference"]
        assert ref["ratio"] > 0 and ref["max_rel_err"] < 1e-4, (name, ref)
        assert ref["met"] in (True, False)


def test_interleaving_order_and_errors():
    log = []

    def runner(name, fail_at=None):
        def call():
            log.append(name)
            if fail_at is not None and len(log) >= fail_at:
                raise RuntimeError("boom")
            return np.zeros(3)

        return _bench.Runner(f"x:{name}", name, call)

    a = _bench.Contestant("a", runner("A"), _bench.HostClock())
    b = _bench.Contestant("b", runner("B"), _bench.HostClock())
    _bench.interleave([a, b], repeat=3, warmup=1)
    # warm-up (first call + one calibration sample) per contestant, then A B A B A B
    assert log == ["A", "A", "B", "B"] + ["A", "B"] * 3
    assert len(a.samples) == len(b.samples) == 3 and a.error is None
    c = _bench.Contestant("c", runner("C", fail_at=len(log) + 4), _bench.HostClock())
    d = _bench.Contestant("d", runner("D"), _bench.HostClock())
    _bench.interleave([c, d], repeat=3, warmup=1)
    assert c.error == "RuntimeError: boom" and len(d.samples) == 3
    assert "error" in c.summary()


@pytest.mark.skipif(_bench._minor_faults() is None, reason="no getrusage on this platform")
def test_host_clock_counts_page_faults_per_call():
    import mmap

    def fresh_pages():  # 64 pages of a new anonymous mapping, each touched once
        m = mmap.mmap(-1, 64 * mmap.PAGESIZE)
        for i in range(0, len(m), mmap.PAGESIZE):
            m[i] = 1
        m.close()

    toucher = _bench.Contestant("t", _bench.Runner("x:t", "t", fresh_pages), _bench.HostClock())
    idle = _bench.Contestant("i", _bench.Runner("x:i", "i", lambda: None), _bench.HostClock())
    _bench.interleave([toucher, idle], repeat=3, warmup=1)
    assert toucher.summary()["page_faults_per_call"] >= 64
    assert idle.summary()["page_faults_per_call"] < 64
    cases = {"c": {"peer_page_faults_per_call": toucher.summary()["page_faults_per_call"],
                   "fastconv": {"cpu": {"page_faults_per_call": 0.0}}}}
    lines = _bench._fault_lines(cases)
    assert len(lines) == (1 if toucher.summary()["page_faults_per_call"]
                          >= _bench.FAULT_NOTE_MIN else 0)
    cases["c"]["peer_page_faults_per_call"] = 6272.0
    (line,) = _bench._fault_lines(cases)
    assert "c:" in line and "peer 6272" in line and "cpu 0" in line
    cases["c"]["peer_page_faults_per_call"] = 3.0
    assert _bench._fault_lines(cases) == []


def _fake_gpu(monkeypatch, on_cupy_call=None):
    """GPU runners that are the oracle in disguise, host timers for CUDA events, and an env;
    ``on_cupy_call(case)`` runs at each call of the "cupy" runner."""
    real = _bench.make_runner

    def fake(case, impl, size="full", seed=0, inputs=None, check_boxes=True):
        if impl in ("fastconv:cupy", "fastconv:numba_cuda", "torch:cuda"):
            r = real(case, "fastconv:reference", size, seed, inputs, check_boxes)
            r.impl, r.gpu = impl, "host"
            if impl == "torch:cuda":
                r.label = case.peer_name
            if impl == "fastconv:cupy" and on_cupy_call is not None:
                def call(inner=r.call):
                    on_cupy_call(case)
                    return inner()
                r.call = call
            return r
        return real(case, impl, size, seed, inputs, check_boxes)

    monkeypatch.setattr(_bench, "make_runner", fake)
    return _bench.GpuEnv(
        device_name=lambda: "Fake GPU",
        ceiling=lambda quick: {"matmul_tflops": 50.0, "copy_tbs": 2.5, "nominal_tflops": 67.0,
                               "nominal_copy_tbs": 3.0, "peak_gflops": 5e4, "copy_gbs": 2.5e3},
        timer=lambda lib: _bench.HostEventTimer(),
        delay=None,
    )


def test_gpu_path_with_host_events(monkeypatch):
    """run_gpu end to end with perf_counter standing in for CUDA events."""
    env = _fake_gpu(monkeypatch)
    parser = _bench.build_parser()
    args = parser.parse_args(["--size", "tiny", "--repeat", "2"])
    result = {"date": "today", "versions": {}, "machine": {}}
    cases = _cases.select("depthwise,roi_align_fpn")
    status = {"torch": None, "torchvision": None}
    ok = _bench.run_gpu(cases, ["cupy", "numba_cuda"], args, _bench.Progress(1, False), status,
                        result, env=env)
    assert ok
    gpu = result["gpu"]
    assert {"device", "date", "versions", "cases"} <= set(gpu) and gpu["device"] == "Fake GPU"
    dw = gpu["cases"]["depthwise"]
    assert dw["peer"] == "torch.nn.functional.conv2d" and dw["peer_ms"] > 0
    assert dw["peer_host_ms"] > 0 and dw["target"] == 1.0 and dw["target_bw_pct"] == 70.0
    for b in ("cupy", "numba_cuda"):
        s = dw["fastconv"][b]
        assert s["ms"] > 0 and s["host_ms"] > 0 and s["ratio"] > 0 and "met_bw" in s
        assert s["max_rel_err"] == 0.0 and len(s["samples_ms"]) == 2
        assert s["host_us_target"] == _bench.HOST_OVERHEAD_TARGET_US[b]
    text = _bench.render(result)
    assert "GPU Fake GPU" in text and "host time per call, cupy" in text
    # the per-call host overhead: one tiny case per op, back-to-back calls, with the targets
    host = gpu["host_overhead"]
    assert host["target_us"] == _bench.HOST_OVERHEAD_TARGET_US
    assert set(host["cases"]) == {"depthwise", "roi_align_fpn"}
    for row in host["cases"].values():
        assert row["peer"]["us"] > 0 and "met" not in row["peer"]
        for b in ("cupy", "numba_cuda"):
            assert row[b]["us"] > 0
            assert row[b]["met"] == (row[b]["us"] < _bench.HOST_OVERHEAD_TARGET_US[b])
    assert "host us per call, median of" in text and "numba_cuda us" in text
    json.dumps(_bench._jsonable(result))


def test_host_overhead_counts_back_to_back_calls(monkeypatch):
    calls, syncs = [], []
    runner = _bench.Runner("x", "x", lambda: calls.append(1), lambda: syncs.append(1), "host",
                           "tiny")
    monkeypatch.setattr(_bench, "HOST_OVERHEAD_SAMPLES", 3)
    us = _bench.host_overhead_us(runner)
    assert us > 0
    assert len(calls) == _bench.HOST_OVERHEAD_WARMUP + 3 * _bench.HOST_OVERHEAD_CALLS
    assert len(syncs) == 1 + 3  # after the warm-up and after each sample, outside the timing


@pytest.mark.parametrize("no_autotune", [False, True])
def test_gpu_path_records_what_autotuning_chose(monkeypatch, no_autotune):
    """The cupy runner's calls go through autotune.run (stand-in launches and clock): the
    record names each case's chosen arm, and the autotune state is restored afterwards."""
    from fastconv.backends import _tuning
    from fastconv.backends.cupy import _module, autotune

    arms = {op: autotune._arms(op) for op in autotune.ARMS}
    fast = {op: autotune.label(a[1]) for op, a in arms.items()}
    launched = []

    def time_ms(fn):
        fn()
        return 0.5 if autotune.label(launched[-1]) in fast.values() else 1.0

    monkeypatch.setattr(_module, "device", lambda: 0)
    monkeypatch.setattr(_module, "time_ms", time_ms)
    monkeypatch.setattr(_module, "capturing", lambda: False)
    monkeypatch.setattr(autotune, "_choices", {})
    monkeypatch.setattr(_tuning, "_enabled", False)
    # roi_pool's arms all plan alike here (a constant signature): chosen untimed
    env = _fake_gpu(monkeypatch, lambda case: autotune.run(
        case.op, (case.name,), launched.append,
        (lambda arm: 0) if case.op == "roi_pool" else None))
    args = _bench.build_parser().parse_args(
        ["--size", "tiny", "--repeat", "1"] + (["--no-autotune"] if no_autotune else []))
    result = {"date": "today", "versions": {}, "machine": {}}
    cases = _cases.select("dilated_small,roi_pool_fpn")
    assert _bench.run_gpu(cases, ["cupy"], args, _bench.Progress(1, False),
                          {"torch": None, "torchvision": None}, result, env=env)
    assert not autotune.enabled()
    gpu = result["gpu"]
    assert gpu["autotune"] is (not no_autotune)
    text = _bench.render(result)
    if no_autotune:
        assert launched and set(map(type, launched)) == {type(None)}
        assert "autotune" not in gpu["cases"]["dilated_small"]["fastconv"]["cupy"]
        assert "default kernel paths (--no-autotune)" in text
        return
    (tuned,) = gpu["cases"]["dilated_small"]["fastconv"]["cupy"]["autotune"]
    assert tuned["label"] == fast["conv2d"] and tuned["skipped"] == tuned["same_as"] == {}
    assert tuned["ms"][fast["conv2d"]] == 0.5
    n = len(arms["conv2d"])
    assert f"dilated_small cupy: {fast['conv2d']} (x2.00, {n} plans timed)" in text
    (tuned,) = gpu["cases"]["roi_pool_fpn"]["fastconv"]["cupy"]["autotune"]
    default = autotune.label(arms["roi_pool"][0])
    assert tuned["label"] == default and tuned["ms"] == {}
    assert len(tuned["same_as"]) == len(arms["roi_pool"]) - 1
    assert f"roi_pool_fpn cupy: {default} (the one distinct plan, not timed)" in text
    json.dumps(_bench._jsonable(result))


def test_gpu_clock_queues_behind_delay():
    waits = []
    clock = _bench.GpuClock(lambda: None, _bench.HostEventTimer(), delay=waits.append)
    clock.delay_s = 0.001
    assert clock.device_sample(lambda: None) >= 0 and waits == [0.001]
    assert clock.host_sample(lambda: None) >= 0


def test_device_time_skips_the_synchronising_box_check():
    """A GPU contestant's device samples run ``device_call``; its host samples run ``call``."""
    log = []
    runner = _bench.Runner("fastconv:cupy", "fc", lambda: log.append("checked"),
                           gpu="host", device_call=lambda: log.append("unchecked"))
    clock = _bench.GpuClock(lambda: None, _bench.HostEventTimer())
    c = _bench.Contestant("cupy", runner, clock)
    _bench.interleave([c], repeat=2, warmup=1)
    # first call (checked), the delay calibration (unchecked x3), then host+device rounds
    assert log == ["checked"] + ["unchecked"] * 3 + ["checked", "unchecked"] * 2
    assert len(c.samples) == len(c.host_samples) == 2


def test_first_call_subprocess():
    case = _cases.get("roi_pool_fpn")
    warm = _bench.first_call(case, "reference", size="tiny")
    cold = _bench.first_call(case, "reference", size="tiny", cold=True)
    for r in (warm, cold):
        assert "error" not in r, r
        assert r["import_s"] > 0 and r["first_s"] > 0 and r["second_s"] > 0


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        _bench.main(["--cases", "no_such_case", "--no-progress"])
    assert exc.value.code == 2 and "unknown case" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _bench.main(["--backend", "tpu"])
    with pytest.raises(SystemExit):
        _bench.main(["--threads", "0"])
    if not _bench.usable_backends()["cupy"][0]:
        with pytest.raises(SystemExit):
            _bench.main(["--backend", "cupy"])


def test_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find(name, *a))
    with pytest.raises(SystemExit):
        _bench.main(["--plot", str(tmp_path / "x.png"), "--cases", "depthwise"])
    assert "needs matplotlib" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed")
def test_plot(tmp_path):
    result = {"date": "d", "versions": {}, "cpu": {"device": "cpu", "threads": {"1": {"cases": {
        "depthwise": {"target": 1.0, "fastconv": {"cpu": {"ratio": 0.8}}},
        "roi_pool_fpn": {"target": 0.2, "fastconv": {"cpu": {"error": "x"}}},
    }}}}}
    path = tmp_path / "chart.png"
    _bench.plot(result, str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_scipy_filter_mapping():
    ndimage = pytest.importorskip("scipy.ndimage")
    from fastconv import reference

    inp = _cases.get("dilated_single").inputs("tiny")
    image, kernel = _cases.scipy_filter_args(inp)
    got = ndimage.correlate(image.astype(np.float64), kernel.astype(np.float64), mode="constant")
    want = reference.conv2d(inp.arrays["input"], inp.arrays["weight"], None,
                            **{k: inp.params[k] for k in ("stride", "padding", "dilation",
                                                          "groups")})
    np.testing.assert_allclose(got, want[0, 0], rtol=1e-6, atol=1e-6)
    assert _cases.scipy_filter_args(_cases.get("dilated_aspp").inputs("tiny")) is None


def test_ab_script_arms_name_real_settings_with_the_default_first():
    """bench/ab_cupy_variants.py (GPU only) at least wires its arms to settings that exist,
    and its first arm per op is what the backend does by default."""
    from fastconv.backends.cupy.variants import OWNER

    ab = bench_script("ab_cupy_variants")
    for op, arms in ab.VARIANTS.items():
        assert any(c.op == op for c in _cases.CASES.values()), op
        for arm in arms:
            for name in arm:
                assert hasattr(OWNER[name], name), name
        assert all(getattr(OWNER[n], n) == v for n, v in arms[0].items()), (op, arms[0])
        assert len({ab.arm_label(a) for a in arms}) == len(arms)
        assert all(a.keys() == arms[0].keys() for a in arms), op  # nothing carries over


def test_ab_script_recommends_the_fastest_matching_arm():
    ab = bench_script("ab_cupy_variants")

    def row(ms, err=None, errors=None):
        arms = list(ms)
        return {"arms": arms, "ms": {"peer": 1.0, **ms},
                "max_rel_err": err or {a: 1e-6 for a in arms}, "errors": errors or {}}

    rows = {
        # conv2d: "s" wins on one case and loses a little on the other: geomean 1.5 * 0.9
        "dilated_aspp": row({"d": 2.0, "s": 1.0, "w": 0.5}, err={"d": 0, "s": 0, "w": 0.5}),
        "dilated_small": row({"d": 1.0, "s": 1.1, "w": 0.1}, err={"d": 0, "s": 0, "w": 0}),
        # roi_pool: the only faster arm failed: keep the default
        "roi_pool_fpn": row({"d": 1.0, "x": 0.5}, errors={"x": "boom"}),
    }
    rec = ab.recommend(rows)
    assert rec["conv2d"]["arm"] == "s"  # "w" is fastest but its output is wrong on one case
    assert rec["conv2d"]["speedup"] == pytest.approx((2.0 / 1.0 * 1.0 / 1.1) ** 0.5, abs=1e-3)
    assert rec["conv2d"]["per_case"] == [2.0, 0.909]
    assert rec["roi_pool"] == {"arm": "d", "speedup": 1.0, "per_case": [1.0]}


def test_variants_forced_restores_every_setting():
    from fastconv.backends.cupy import conv, variants

    before = variants.current()
    with pytest.raises(RuntimeError), variants.forced({"SPLIT_K": 4, "ROI_CB": 1}):
        assert conv.SPLIT_K == 4 and variants.current()["ROI_CB"] == 1
        raise RuntimeError
    assert variants.current() == before
    with pytest.raises(KeyError):
        variants.apply({"NO_SUCH_SETTING": 1})
