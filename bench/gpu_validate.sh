#!/usr/bin/env bash
# Validate fastconv on a GPU machine, time it against cuDNN/torchvision, and record both.
#
#   bash bench/gpu_validate.sh            # from the repository root (or anywhere)
#
# Steps (each under its own time limit, so one stuck step cannot eat the others):
#   info      python -m fastconv info
#   tests     the whole test suite but the `slow` tests, GPU tests included (pytest-xdist
#             when present; failures printed as they happen)
#   slow      the `slow` GPU tests (the > 2**31-element tensors), one at a time
#   check     python -m fastconv check (every usable backend against the oracle)
#   sanitize  compute-sanitizer memcheck (and racecheck for the cupy kernels) on
#             bench/gpu_sanitize_driver.py, which calls every GPU kernel once
#   bench     python -m fastconv bench --backend cupy,numba_cuda --no-first-call, then
#             bench/ab_cupy_variants.py and bench/gpu_profile.py host
# then a JSON record (device, driver, package versions, tests passed/failed, check and
# sanitizer results, and the benchmark in the form {"cases": {case: {"peer", "peer_ms",
# "fastconv": {backend: {"ms", "ratio"}}}}}) written to bench/results/<date>-<device>.json
# and, when $OUT is set, to $OUT/gpu_validate.json.  A record already there is updated:
# only the steps that ran replace their sections, so a lease whose calls are limited to
# 10 minutes can split the work, e.g.
#   STEPS="info tests check" bash bench/gpu_validate.sh        # call 1 (~7 min on an H100)
#   cp <call 1's gpu_validate.json> bench/results/<date>-<device>.json
#   STEPS="bench" bash bench/gpu_validate.sh                   # call 2 (bench, A/B, host)
#   STEPS="slow sanitize" bash bench/gpu_validate.sh           # call 3
#
# Environment: PYTHON (default: python3), STEPS (default: all of the above), PYTEST_ARGS
# (extra pytest arguments), TESTS_TIMEOUT / SLOW_TIMEOUT / CHECK_TIMEOUT /
# SANITIZE_TIMEOUT / BENCH_TIMEOUT / AB_TIMEOUT in seconds, CHECK_CASES (default 25), XDIST_WORKERS
# (default 14).
# Exit status: 0 when every step that ran passed.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
STEPS=${STEPS:-"info tests slow check sanitize bench"}
LOGDIR=${LOGDIR:-$REPO/bench/results/logs}  # git-ignored; tarred into $OUT at the end
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
    if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "${XDIST_WORKERS:-14}"); fi
    # -p bench.pytest_instafail: failures are printed as they happen, so a run cut off by
    # its time limit still says what failed and why.  The cupyemu tests run the CUDA C on
    # the CPU (CI's job), not the GPU.
    # shellcheck disable=SC2086
    run_step tests "${TESTS_TIMEOUT:-420}" "$PY" -m pytest -q -rs -m "not slow and not cupyemu" \
        "${XDIST[@]}" -p no:cacheprovider -p bench.pytest_instafail ${PYTEST_ARGS:-} tests
fi

if has slow; then
    # shellcheck disable=SC2086
    run_step tests_slow "${SLOW_TIMEOUT:-300}" "$PY" -m pytest -q -rs -m "slow and gpu" \
        -p no:cacheprovider ${PYTEST_ARGS:-} tests
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

if has bench; then
    rm -f "$LOGDIR/bench.json" "$LOGDIR/ab_cupy_variants.json"  # never record a stale run
    # cupy and numba_cuda autotune per case (compiling cupy's optional kernels once, ~20 s,
    # and numba's other kernel paths, ~10 kernels of 0.4-1.1 s of NVVM each on the dev VM),
    # so the A/B step after it finds cupy's in CuPy's disk cache
    run_step bench "${BENCH_TIMEOUT:-280}" "$PY" -m fastconv bench --backend cupy,numba_cuda \
        --no-first-call --no-progress --json "$LOGDIR/bench.json"
    run_step ab_cupy_variants "${AB_TIMEOUT:-180}" "$PY" bench/ab_cupy_variants.py \
        --json "$LOGDIR/ab_cupy_variants.json"
    # the bench's own table has every op's host time per call; this adds where a cupy call's
    # host time goes (cProfile)
    run_step host 40 "$PY" bench/gpu_profile.py host --cases dilated_small --profile dilated_small
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
    failed = re.findall(r"^(?:!!! )?(?:FAILED|ERROR) (\S+)", text, re.M)
    return {"counts": counts, "failed_tests": sorted(set(failed))[:50]}

def sanitizer(text):
    if text is None:
        return None
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return {"errors": int(m[-1]) if m else None, "summary": (re.findall(r".*SUMMARY.*", text) or [""])[-1]}

def bench_cases():
    """The GPU section of the bench JSON in the issue's form, plus what else it measured."""
    path = os.path.join(os.environ["LOGDIR"], "bench.json")
    if not os.path.exists(path):
        return None
    gpu = json.load(open(path)).get("gpu") or {}
    cases = {}
    for case, e in gpu.get("cases", {}).items():
        cases[case] = {"peer": e.get("peer"), "peer_ms": e.get("peer_ms"),
                       "peer_host_ms": e.get("peer_host_ms"), "target": e.get("target"),
                       "fastconv": {b: {k: s.get(k) for k in ("ms", "ratio", "met", "host_ms",
                                                             "pct_bw", "max_rel_err", "error",
                                                             "autotune")
                                        if k in s}
                                    for b, s in e.get("fastconv", {}).items()}}
    return {"ceiling": gpu.get("ceiling"), "versions": gpu.get("versions"),
            "autotune": gpu.get("autotune"), "host_overhead": gpu.get("host_overhead"),
            "cases": cases}

def json_file(name):
    path = os.path.join(os.environ["LOGDIR"], name)
    return json.load(open(path)) if os.path.exists(path) else None

rcs = dict(kv.split("=") for kv in os.environ["STEP_RCS"].split())
rcs = {k: int(v) for k, v in rcs.items()}
gpu = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
name = gpu.split(",")[0].strip() if gpu and "unavailable" not in gpu else "no-gpu"
slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "gpu"
day = datetime.date.today().isoformat()
paths = [os.path.join("bench", "results", f"{day}-{slug}.json")]
record = {}
if os.path.exists(paths[0]):  # an earlier call of the same lease: update its record
    record = json.load(open(paths[0]))
record.update({
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": gpu,
    "cuda_driver": sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
    "commit": sh(["git", "rev-parse", "HEAD"]) or None,
    "packages": {p: ver(p) for p in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy",
                                     "cuda-bindings", "cuda-pathfinder", "torch", "torchvision",
                                     "pytest", "hypothesis")},
    "python": sys.version.split()[0],
})
record["steps_exit_codes"] = {**record.get("steps_exit_codes", {}), **rcs}
sections = {  # step -> (record key, how to read it): only the steps that ran replace theirs
    "tests": ("tests", lambda: pytest_counts(log("tests"))),
    "tests_slow": ("tests_slow", lambda: pytest_counts(log("tests_slow"))),
    "check": ("check", lambda: {"passed": rcs.get("check") == 0,
                                "failures": [l for l in (log("check") or "").splitlines()
                                             if "FAIL" in l][:50]}),
    "memcheck": ("memcheck", lambda: sanitizer(log("memcheck"))),
    "racecheck": ("racecheck", lambda: sanitizer(log("racecheck"))),
    "bench": ("bench", bench_cases),
    "ab_cupy_variants": ("cupy_variants_ab", lambda: json_file("ab_cupy_variants.json")),
    "host": ("host_overhead", lambda: [l for l in (log("host") or "").splitlines()
                                       if l.strip() and not l.startswith(" ")][:40]),
}
for step, (key, read) in sections.items():
    if step in rcs:
        record[key] = read()
record["passed"] = all(v == 0 for v in record["steps_exit_codes"].values())
text = json.dumps(record, indent=2)
if os.environ.get("OUT"):
    paths.append(os.path.join(os.environ["OUT"], "gpu_validate.json"))
for p in paths:
    with open(p, "w") as f:
        f.write(text + "\n")
print(text)
print("written:", ", ".join(paths))
EOF

if [ -n "${OUT:-}" ]; then  # the logs as one file: a lent machine returns at most 8
    tar czf "$OUT/gpu_logs.tgz" -C "$LOGDIR" . && echo "logs: $OUT/gpu_logs.tgz"
fi

FAILED=0
for k in "${!RC[@]}"; do [ "${RC[$k]}" -ne 0 ] && FAILED=1; done
exit $FAILED
