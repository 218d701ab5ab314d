"""pytest-benchmark suite: every case x every usable fastconv backend x every installed peer.

Not part of the CI test run (``testpaths = ["tests"]``); run it explicitly, in an
environment with the peers (``pip install -e ".[test,bench]"``)::

    pytest bench/                                    # everything that can run here
    pytest bench/ --fc-threads 2 --benchmark-save=cpu-2t
    pytest bench/ -k "dilated_aspp"                  # one case
    pytest bench/ --fc-sizes small                   # the reduced sizes only (incl. the oracle)
    pytest-benchmark compare 0001 0002 --group-by=group
    OMP_WAIT_POLICY=PASSIVE pytest bench/ --fc-threads 2   # on a busy machine (see docs)

Implementations (``fastconv._bench.IMPLS``): ``fastconv:cpu``, ``fastconv:cupy`` and
``fastconv:numba_cuda`` (when a GPU is usable), ``fastconv:reference`` (the NumPy oracle,
reduced sizes only), and the peers ``torch:cpu``/``torch:cuda``
(``torch.nn.functional`` / ``torchvision.ops``), ``scipy:cpu``/``cupyx:cuda``
(``scipy.ndimage.correlate`` / ``cupyx.scipy.ndimage.correlate``, single-channel
filters only: the ``dilated_single`` case).  Whatever is missing skips.

Each benchmark's group is ``"<case> [<size>, <cpu|gpu>]"``, so pytest-benchmark's
default ``--benchmark-group-by=group`` prints (and ``compare`` shows) fastconv right
beside its peers.  A GPU call is timed with a device synchronisation after it
(wall time); the CLI (``python -m fastconv bench``) also reports CUDA-event device
time, interleaves the contestants and prints ratios: use it for recorded numbers.
``extra_info`` holds the FLOP and byte counts and the resulting GFLOP/s.
"""

from __future__ import annotations

import importlib.util

import pytest

from fastconv import _bench, _cases

FULL_IMPLS = ("fastconv:cpu", "fastconv:cupy", "fastconv:numba_cuda",
              "torch:cpu", "torch:cuda", "scipy:cpu", "cupyx:cuda")
SMALL_IMPLS = ("fastconv:cpu", "fastconv:reference", "torch:cpu", "scipy:cpu")


def pytest_addoption(parser):
    group = parser.getgroup("fastconv bench")
    group.addoption("--fc-threads", type=int, default=None,
                    help="numba and torch threads for the CPU contestants (default: as is)")
    group.addoption("--fc-cases", default=None,
                    help="comma-separated cases or ops (default: every case incl. extras)")
    group.addoption("--fc-sizes", default="full,small",
                    help="sizes to run: full (BENCHMARKS.md shapes; no oracle), small "
                         "(reduced; with the oracle), tiny (default: full,small)")
    group.addoption("--fc-skip-box-checks", action="store_true",
                    help="call fastconv's roi ops with check_boxes=False")


def _selected_cases(config):
    spec = config.getoption("--fc-cases")
    if spec is None:
        return list(_cases.CASES.values())
    return _cases.select(spec)


def pytest_generate_tests(metafunc):
    """Parametrise ``case_name, size, impl`` over the module's ``OPS``."""
    if not {"case_name", "size", "impl"} <= set(metafunc.fixturenames):
        return
    ops = metafunc.module.OPS
    sizes = [s.strip() for s in metafunc.config.getoption("--fc-sizes").split(",") if s.strip()]
    params = []
    for case in _selected_cases(metafunc.config):
        if case.op not in ops:
            continue
        for size in sizes:
            for impl in FULL_IMPLS if size == "full" else SMALL_IMPLS:
                params.append(pytest.param(case.name, size, impl,
                                           id=f"{case.name}-{size}-{impl.replace(':', '_')}"))
    metafunc.parametrize(("case_name", "size", "impl"), params)


@pytest.fixture(scope="session", autouse=True)
def _threads(request):
    n = request.config.getoption("--fc-threads")
    if n is not None:
        if importlib.util.find_spec("torch") is not None:
            try:
                import torch  # noqa: F401 - so that set_threads sets torch's too
            except Exception:  # noqa: BLE001 - a broken torch is a skipped peer
                pass
        _bench.set_threads(n)
    return n


@pytest.fixture
def bench_case(benchmark, request, _threads):
    """``bench_case(case_name, size, impl)``: build the contestant, warm up, benchmark it."""

    def run(case_name, size, impl):
        case = _cases.get(case_name)
        check = not request.config.getoption("--fc-skip-box-checks")
        try:
            runner = _bench.make_runner(case, impl, size, check_boxes=check)
        except _bench.Unavailable as exc:
            pytest.skip(str(exc))
        for _ in range(2):  # JIT compile / kernel load / cuDNN autotuning, not timed
            runner.run_synced()
        cost = case.cost(size)
        device = "gpu" if runner.gpu else "cpu"
        benchmark.group = f"{case_name} [{size}, {device}]"
        benchmark.extra_info.update(
            case=case_name, op=case.op, size=size, impl=impl, label=runner.label,
            flops=cost["flops"], bytes=cost["bytes"], threads=_threads,
            target_ratio=case.target_gpu if runner.gpu else case.target_cpu,
        )
        benchmark(runner.run_synced)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        if stats is not None and getattr(stats, "median", 0):
            benchmark.extra_info["gflops_median"] = cost["flops"] / stats.median / 1e9
            benchmark.extra_info["gbs_median"] = cost["bytes"] / stats.median / 1e9

    return run
