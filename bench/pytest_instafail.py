"""pytest plugin: print each failure's report as soon as it happens (``-p bench.pytest_instafail``).

For runs that may be cut off by a time limit (a lent GPU machine): pytest prints
failure details only at the end of the session, which a killed run never reaches.
"""

import sys


def pytest_runtest_logreport(report):
    if report.failed:
        text = report.longreprtext
        sys.stderr.write(f"\n!!! FAILED {report.nodeid} ({report.when})\n{text[-3000:]}\n")
        sys.stderr.flush()
