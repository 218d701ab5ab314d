"""roi_align and roi_pool against torchvision.ops (see conftest.py)."""

OPS = ("roi_align", "roi_pool")


def test_roi(bench_case, case_name, size, impl):
    bench_case(case_name, size, impl)
