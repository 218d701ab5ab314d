"""deform_conv2d (DCNv2) against torchvision.ops.deform_conv2d (see conftest.py)."""

OPS = ("deform_conv2d",)


def test_deform(bench_case, case_name, size, impl):
    bench_case(case_name, size, impl)
