#!/usr/bin/env bash
# Validate fastconv on a GPU machine and record the result.
#
#   bash bench/gpu_validate.sh            # from the repository root (or anywhere)
#
# Steps (each under its own time limit, so one stuck step cannot eat the others):
#   1. python -m fastconv info
#   2. the whole test suite, GPU tests included: the fast tests in parallel
#      (pytest-xdist when present), then the `slow` ones (the > 2**31-element tensors)
#      one at a time
#   3. python -m fastconv check (every usable backend against the oracle)
#   4. compute-sanitizer memcheck (and racecheck for the cupy kernels) on
#      bench/gpu_sanitize_driver.py, which calls every GPU kernel once
#   5. a JSON record (device, driver, package versions, tests passed/failed, check and
#      sanitizer results) written to $OUT/gpu_validate.json (when $OUT is set) and to
#      bench/results/<date>-<device>.json
#
# Environment: PYTHON (default: python3), STEPS (default "info tests check sanitize"),
# PYTEST_ARGS (extra pytest arguments), TESTS_TIMEOUT / SLOW_TIMEOUT / CHECK_TIMEOUT /
# SANITIZE_TIMEOUT in seconds, CHECK_CASES (default 25), XDIST_WORKERS (default 8).
# Exit status: 0 when every step that ran passed.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
STEPS=${STEPS:-"info tests check sanitize"}
LOGDIR=${OUT:-$REPO/bench/results/logs}
mkdir -p "$LOGDIR" "$REPO/bench/results"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$HOME/.cupy/kernel_cache}

declare -A RC
run_step() {  # name timeout command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$LOGDIR/$name.log" 2>&1
    RC[$name]=$?
    tail -n 25 "$LOGDIR/$name.log"
    echo "=== $name: exit ${RC[$name]} after $((SECONDS - t0)) s"
}

has() { [[ " $STEPS " == *" $1 "* ]]; }

if has info; then
    run_step info 120 "$PY" -m fastconv info
fi

if has tests; then
    XDIST=()
    if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "${XDIST_WORKERS:-8}"); fi
    # shellcheck disable=SC2086
    # -p bench.pytest_instafail: failures are printed as they happen, so a run cut off by
    # its time limit still says what failed and why
    run_step tests "${TESTS_TIMEOUT:-420}" "$PY" -m pytest -q -rs -m "not slow" "${XDIST[@]}" \
        -p bench.pytest_instafail ${PYTEST_ARGS:-} tests
    # shellcheck disable=SC2086
    run_step tests_slow "${SLOW_TIMEOUT:-300}" "$PY" -m pytest -q -rs -m slow ${PYTEST_ARGS:-} tests
fi

if has check; then
    run_step check "${CHECK_TIMEOUT:-240}" "$PY" -m fastconv check --cases "${CHECK_CASES:-25}"
fi

if has sanitize; then
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    if [ -n "$SAN" ]; then
        run_step memcheck "${SANITIZE_TIMEOUT:-300}" "$SAN" --tool memcheck --leak-check no \
            --error-exitcode 99 "$PY" bench/gpu_sanitize_driver.py
        run_step racecheck "${SANITIZE_TIMEOUT:-300}" "$SAN" --tool racecheck \
            --error-exitcode 99 "$PY" bench/gpu_sanitize_driver.py --backends cupy
    else
        echo "compute-sanitizer not found: sanitizer steps skipped"
    fi
fi

# ------------------------------------------------------------------------------ record
STEP_RCS=""
for k in "${!RC[@]}"; do STEP_RCS+="$k=${RC[$k]} "; done
STEP_RCS="$STEP_RCS" LOGDIR="$LOGDIR" "$PY" - <<'EOF'
import datetime, json, os, re, subprocess, sys
from importlib.metadata import version

def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({exc})"

def ver(name):
    try:
        return version(name)
    except Exception:  # noqa: BLE001
        return None

def log(name):
    path = os.path.join(os.environ["LOGDIR"], name + ".log")
    return open(path, errors="replace").read() if os.path.exists(path) else None

def pytest_counts(text):
    if text is None:
        return None
    counts = {}
    lines = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", l)]
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)",
                              lines[-1] if lines else ""):
        counts[what] = int(n)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    return {"counts": counts, "failed_tests": failed[:50]}

def sanitizer(text):
    if text is None:
        return None
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return {"errors": int(m[-1]) if m else None, "summary": (re.findall(r".*SUMMARY.*", text) or [""])[-1]}

rcs = dict(kv.split("=") for kv in os.environ["STEP_RCS"].split())
rcs = {k: int(v) for k, v in rcs.items()}
gpu = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
name = gpu.split(",")[0].strip() if gpu and "unavailable" not in gpu else "no-gpu"
check = log("check")
record = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": gpu,
    "cuda_driver": sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
    "commit": sh(["git", "rev-parse", "HEAD"]) or None,
    "packages": {p: ver(p) for p in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy",
                                     "cuda-bindings", "cuda-pathfinder", "torch", "torchvision",
                                     "pytest", "hypothesis")},
    "python": sys.version.split()[0],
    "steps_exit_codes": rcs,
    "tests": pytest_counts(log("tests")),
    "tests_slow": pytest_counts(log("tests_slow")),
    "check": None if check is None else {
        "passed": rcs.get("check") == 0,
        "failures": [l for l in check.splitlines() if "FAIL" in l][:50],
    },
    "memcheck": sanitizer(log("memcheck")),
    "racecheck": sanitizer(log("racecheck")),
    "passed": all(v == 0 for v in rcs.values()),
}
text = json.dumps(record, indent=2)
slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "gpu"
day = datetime.date.today().isoformat()
paths = [os.path.join("bench", "results", f"{day}-{slug}.json")]
if os.environ.get("OUT"):
    paths.append(os.path.join(os.environ["OUT"], "gpu_validate.json"))
for p in paths:
    with open(p, "w") as f:
        f.write(text + "\n")
print(text)
print("written:", ", ".join(paths))
EOF

FAILED=0
for k in "${!RC[@]}"; do [ "${RC[$k]}" -ne 0 ] && FAILED=1; done
exit $FAILED
