"""conv2d and conv_transpose2d: dilated, grouped, depthwise, transposed (see conftest.py)."""

OPS = ("conv2d", "conv_transpose2d")


def test_conv(bench_case, case_name, size, impl):
    bench_case(case_name, size, impl)
