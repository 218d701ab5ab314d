"""Per-problem choice between a GPU backend's kernel paths by timing them: the logic that the
cupy and numba.cuda backends share (``fastconv.set_autotune``).

A backend's tuner is its ``autotune`` module, passed to :func:`run` as ``tuner``.  It holds

* ``_choices`` (dict) and ``_lock`` (a lock): the problems tuned so far;
* ``ROUNDS`` (timed runs of each arm after one untimed run) and ``MARGIN`` (how much faster
  another arm must be to replace the module settings' own);
* ``_arms(op)``: the arms of an op (dicts of the backend's setting names to values), the
  module settings' present values first;
* ``clock()``: an object with ``device()`` (the current device's ordinal), ``capturing()``
  (whether the caller's stream is capturing a CUDA graph; True when unsure) and
  ``time_ms(fn)`` (device milliseconds of the work ``fn()`` enqueues on the caller's
  stream, waiting for it).

Reading these from the module at each call keeps them patchable (the tests swap the clock).
Nothing here imports a GPU library.
"""

from __future__ import annotations

import math
import warnings

_enabled = False


def enabled() -> bool:
    """Whether autotuning is on (for every GPU backend)."""
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Turn autotuning on or off; returns the previous state (see ``fastconv.set_autotune``)."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def label(arm: dict) -> str:
    """``"SPLIT_K=None GEMM_VEC=True"``."""
    return " ".join(f"{k}={v}" for k, v in arm.items())


def box_bucket(k: int) -> int:
    """A box count as the RoI ops' problem keys hold it: rounded up to a power of two, since
    a detector passes a different count with every image."""
    return 1 << max(k - 1, 0).bit_length()


def choices(tuner) -> list[dict]:
    """The problems ``tuner`` has tuned, in order (see the backends' ``choices``)."""
    with tuner._lock:
        return [dict(op=op, device=dev, key=key, **entry)
                for (op, dev, key), entry in tuner._choices.items()]


def clear(tuner) -> None:
    """Forget every choice of ``tuner`` (the next call of each problem is tuned again)."""
    with tuner._lock:
        tuner._choices.clear()


def run(tuner, op: str, key: tuple, launch, signature=None) -> None:
    """Run one call of ``op``: ``launch(arm)`` enqueues its kernels with ``arm``'s settings
    (``None``: the module settings).  With autotuning off this is ``launch(None)``.

    ``key`` identifies the problem (shapes, parameters, dtype); the device is added here.
    ``signature(arm)``, if given, is a hashable summary of what ``launch(arm)`` would enqueue
    (kernels, grids, scalar arguments), computed without allocating or launching: arms
    whose signatures are equal run the same kernels, so only the first of them is timed,
    and a problem with a single distinct arm is not timed at all.
    """
    if not _enabled:
        launch(None)
        return
    clock = tuner.clock()
    full = (op, clock.device(), key)
    entry = tuner._choices.get(full)
    if entry is not None:
        launch(entry["arm"])
        return
    if clock.capturing():  # no synchronising inside a graph capture: tune another time
        launch(None)
        return
    entry = tune(tuner, op, launch, signature)
    with tuner._lock:
        tuner._choices[full] = entry
    launch(entry["arm"])  # the output, from the chosen arm alone


def distinct(arms: list[dict], signature) -> tuple[list[dict], dict]:
    """``(arms, same_as)``: the arms with distinct signatures, in order, and for each arm
    left out the label of the earlier arm it plans alike.  An arm whose signature cannot be
    computed is kept (timing it will tell what is wrong, or raise as the call would)."""
    if signature is None:
        return arms, {}
    kept, same_as, first = [], {}, {}
    for arm in arms:
        try:
            sig = signature(arm)
        except Exception:
            kept.append(arm)
            continue
        if sig in first:
            same_as[label(arm)] = label(first[sig])
        else:
            first[sig] = arm
            kept.append(arm)
    return kept, same_as


def tune(tuner, op: str, launch, signature=None) -> dict:
    """Time the distinct arms of ``op`` (interleaved rounds; an arm's time is its fastest
    run) and return the entry of the choice: ``{"arm", "label", "ms", "skipped",
    "same_as"}``."""
    arms, same_as = distinct(tuner._arms(op), signature)
    if len(arms) == 1:  # nothing to choose between: no timing, no synchronisation
        return {"arm": arms[0], "label": label(arms[0]), "ms": {}, "skipped": {},
                "same_as": same_as}
    time_ms = tuner.clock().time_ms
    best = [math.inf] * len(arms)
    skipped: dict = {}
    for rnd in range(1 + tuner.ROUNDS):
        for i, arm in enumerate(arms):
            if label(arm) in skipped:
                continue
            try:
                ms = time_ms(lambda arm=arm: launch(arm))
            except Exception as exc:
                if i == 0:
                    raise  # the call fails as it would without tuning
                skipped[label(arm)] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"fastconv autotune: {op} arm {label(arm)} skipped "
                              f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=5)
                continue
            if rnd:
                best[i] = min(best[i], ms)
    chosen = 0
    for i in range(1, len(arms)):
        if best[i] < tuner.MARGIN * best[0] and best[i] < best[chosen]:
            chosen = i
    return {"arm": arms[chosen], "label": label(arms[chosen]),
            "ms": {label(a): t for a, t in zip(arms, best, strict=True)
                   if label(a) not in skipped},
            "skipped": skipped, "same_as": same_as}
