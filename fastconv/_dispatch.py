"""Array type -> backend: the registry, the checks that span arrays, and the result's type.

``prepare`` looks at the arrays of one call, picks the backend (numpy ->
``"cpu"``, cupy and other ``__cuda_array_interface__`` objects -> ``"cupy"``,
numba device arrays -> ``"numba_cuda"``, or the ``backend=`` override),
converts every array zero-copy to that backend's native type, and checks the
dtypes and devices.  The public wrapper then validates shapes and calls
``Call.run``, which makes the arrays contiguous, launches the backend's op on
the input's device and hands the result back in the input's array type.

GPU libraries are imported only when a GPU array or backend shows up, so
``import fastconv`` works on a machine without any CUDA stack.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from . import _args
from ._errors import BackendUnavailableError
from .backends import _host

#: backend name -> (module, runs on GPU arrays?, accepts float16?)
BACKENDS = {
    "cpu": ("fastconv.backends.cpu", False, False),
    # the oracle's ops are called by the wrappers themselves; this module is its array plumbing
    "reference": ("fastconv.backends._host", False, False),
    "cupy": ("fastconv.backends.cupy", True, True),
    "numba_cuda": ("fastconv.backends.numba_cuda", True, False),
}

#: array kind -> the backend chosen when ``backend=None``
DEFAULT_BACKEND = {"numpy": "cpu", "cupy": "cupy", "numba": "numba_cuda", "cai": "cupy"}


def array_kind(obj) -> str:
    """``"numpy"`` (host arrays and array-likes), ``"cupy"``, ``"numba"`` or ``"cai"``.

    ``"cai"`` is any other object exposing ``__cuda_array_interface__``, e.g. a
    PyTorch CUDA tensor; it is used zero-copy and the result comes back as a
    cupy array.
    """
    if isinstance(obj, np.ndarray):
        return "numpy"
    module = type(obj).__module__
    if module.startswith("cupy"):
        return "cupy"
    if module.startswith(("numba.", "numba_cuda.")):
        return "numba"
    if hasattr(obj, "__cuda_array_interface__"):
        return "cai"
    return "numpy"


def _type_name(obj) -> str:
    t = type(obj)
    return f"{t.__module__.split('.')[0]}.{t.__qualname__}"


def check_backend_name(name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, got {name!r}")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")


#: backend name -> its module, once it has imported and passed ``check_available``
_ready: dict = {}
#: (backend module name, op) -> the op's function (``Call.run`` resolves each once)
_ops: dict = {}


def get_backend(name: str):
    """Import a backend module by name and check that it can run here."""
    module = _ready.get(name)
    if module is not None:
        return module
    check_backend_name(name)
    module_name = BACKENDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        hint = {
            "cupy": 'pip install "fastconv[cuda]" (or pip install cupy-cuda13x)',
            "numba_cuda": 'pip install "fastconv[cuda]" (or pip install "numba-cuda[cu13]")',
        }.get(name, "reinstall fastconv")
        message = f"backend {name!r} cannot be imported ({exc}); {hint}"
        raise BackendUnavailableError(message) from exc
    module.check_available()
    _ready[name] = module
    return module


def backend_status(name: str) -> tuple[bool, str]:
    """``(usable, reason)`` for ``python -m fastconv info``."""
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - report anything that stops a backend
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


@dataclass
class Call:
    """One call's backend, native arrays and how to return its result."""

    name: str
    module: object
    arrays: dict
    dtype: np.dtype
    result_kind: str
    device: int | None = None

    @property
    def is_reference(self) -> bool:
        return self.name == "reference"

    def finish_reference(self, out64: np.ndarray) -> np.ndarray:
        """The oracle computes in float64; the contract returns the input's dtype."""
        return out64.astype(self.dtype, copy=False)

    def run(self, op: str, *arrays, **params):
        """Launch ``op`` with contiguous arrays on the input's device; wrap the result.

        ``op`` is a function of the backend package (``"conv2d"``) or of one of
        its sub-modules (``"resample.upsample"``).
        """
        module = self.module
        fn = _ops.get((module.__name__, op))
        if fn is None:
            # "resample.upsample" names an op in a sub-module of the backend package.
            owner, _, func = op.rpartition(".")
            target = importlib.import_module(f"{module.__name__}.{owner}") if owner else module
            fn = _ops[(module.__name__, op)] = getattr(target, func)
        with module.use_device(self.device):
            contiguous = [None if a is None else module.ascontiguous(a) for a in arrays]
            out = fn(*contiguous, **params)
        return self.wrap(out)

    def wrap(self, out):
        """Give the result back in the input's array type (cai inputs -> cupy)."""
        kind = self.result_kind
        if kind == "numpy":
            return out
        if kind in ("cupy", "cai") and self.name != "cupy":
            import cupy

            return cupy.asarray(out)
        if kind == "numba" and self.name != "numba_cuda":
            from numba import cuda

            return cuda.as_cuda_array(out)
        return out

    def host_array(self, a) -> np.ndarray:
        return np.asarray(self.module.to_host(a)) if self.device is not None else np.asarray(a)

    def from_host(self, a: np.ndarray):
        """A host array on this call's device, in the backend's native type."""
        return upload(self.name, self.module, self.device, a)


def upload(name: str, module, device: int | None, host: np.ndarray):
    """``host`` on ``device`` in backend ``name``'s native type (``host`` itself on the host)."""
    if device is None:
        return host
    with module.use_device(device):
        if name == "cupy":
            import cupy

            return cupy.asarray(host)
        from numba import cuda

        return cuda.to_device(np.ascontiguousarray(host))


def select_backend(backend, kind: str, label: str, obj) -> str:
    """The backend for a call whose (first) array ``label`` is ``obj``, of array kind ``kind``.

    ``None`` picks by array type; a named backend must run where the array lives.
    """
    if backend is None:
        return DEFAULT_BACKEND[kind]
    check_backend_name(backend)
    runs_on_gpu = BACKENDS[backend][1]
    if runs_on_gpu and kind == "numpy":
        raise TypeError(
            f"backend {backend!r} runs on GPU arrays, but {label} is {_type_name(obj)}; "
            "move the arrays to the GPU first (e.g. cupy.asarray)"
        )
    if not runs_on_gpu and kind != "numpy":
        raise TypeError(
            f"backend {backend!r} runs on host arrays, but {label} is {_type_name(obj)}; "
            "copy to the host first (e.g. cupy.asnumpy)"
        )
    return backend


def native_like(module, device: int | None, obj, label: str, owner: str = "input"):
    """``obj`` as a native array that lives where the call's ``owner`` array lives.

    Host arrays go with a host ``owner`` (``device`` None), GPU arrays with a GPU
    one on the same device; anything else raises ``TypeError`` / ``ValueError``.
    """
    kind = array_kind(obj)
    if (kind == "numpy") != (device is None):
        where = "a host array" if device is None else "a GPU array"
        raise TypeError(
            f"{label} is {_type_name(obj)} but {owner} is {where}; "
            f"{label} must live where {owner} lives"
        )
    if kind == "numpy":
        return _host.as_native(obj)
    native = module.as_native(obj)
    if module.device_id(native) != device:
        raise ValueError(
            f"{label} is on device {module.device_id(native)} but {owner} is on device {device}"
        )
    return native


def prepare(backend, **arrays) -> Call:
    """Choose the backend for these arrays (the first one is the input) and convert them.

    ``None`` entries (optional arrays) are passed through.  Raises ``TypeError``
    for mixed host/GPU arrays, a host backend on GPU arrays (or the reverse),
    and bad or mixed dtypes; ``ValueError`` for arrays on different GPUs or an
    unknown backend name.
    """
    if backend is None or backend == "cpu":
        call = _prepare_native_host(backend, arrays)
        if call is not None:
            return call
    kinds = {name: array_kind(a) for name, a in arrays.items() if a is not None}
    first = next(iter(kinds))
    on_host = ["numpy" == k for k in kinds.values()]
    if any(on_host) and not all(on_host):
        raise TypeError(
            "cannot mix host and GPU arrays: "
            + ", ".join(f"{n} is {_type_name(arrays[n])}" for n in kinds)
        )
    name = select_backend(backend, kinds[first], first, arrays[first])
    module = get_backend(name)
    native = {n: (None if a is None else module.as_native(a)) for n, a in arrays.items()}
    dtype = _args.common_float_dtype(native, allow_half=BACKENDS[name][2], backend=name)
    device = None
    if BACKENDS[name][1]:
        devices = {n: module.device_id(a) for n, a in native.items() if a is not None}
        if len(set(devices.values())) > 1:
            raise ValueError(
                "arrays are on different GPUs: "
                + ", ".join(f"{n} on device {d}" for n, d in devices.items())
            )
        device = devices[first]
    return Call(name, module, native, dtype, kinds[first], device)


def _prepare_native_host(backend, arrays: dict):
    """``prepare``'s answer for the most common call, or None to take the general path.

    When every array is a plain ``numpy.ndarray`` of one native float32/float64 dtype,
    the backend is ``"cpu"`` and the arrays are already native, so the general path's
    per-array kind, byte-order and dtype checks would only confirm that (about 1 us of
    a tiny call's host time).  Anything else -- array-likes, GPU arrays, mixed, other or
    non-native dtypes -- returns None, and the general path checks and words the error.
    """
    dtype = None
    for a in arrays.values():
        if a is None:
            continue
        if type(a) is not np.ndarray:
            return None
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return None
    if dtype not in _args.FLOAT_DTYPES:  # also refuses the other byte order
        return None
    module = _ready.get("cpu") or get_backend("cpu")
    return Call("cpu", module, arrays, dtype, "numpy", None)


def stack_boxes(xp, items, is_list: bool, dtype):
    """The ``(K, 5)`` C-contiguous boxes in ``dtype`` from either torchvision format, built
    with the array module ``xp`` (``numpy``, or ``cupy`` on the device, no host trip).

    ``items`` is ``[(K, 5) array]`` or, for the list form, the ``(L_n, 4)`` arrays, whose
    rows get batch index ``n``.
    """
    if not is_list:
        return xp.ascontiguousarray(items[0].astype(dtype, copy=False))
    rows = [xp.concatenate([xp.full((b.shape[0], 1), n, dtype), b.astype(dtype, copy=False)],
                           axis=1) for n, b in enumerate(items)]
    return xp.concatenate(rows, axis=0) if rows else xp.zeros((0, 5), dtype)


def prepare_boxes(call: Call, boxes, batch: int, check: bool):
    """Boxes in either torchvision format -> a native ``(K, 5)`` array in the input's dtype.

    A list/tuple of ``(L_n, 4)`` arrays gets batch index ``n`` for its ``n``-th
    entry.  With ``check`` the coordinates must be finite and the batch indices
    integers in ``[0, batch)``.  On a GPU the boxes are built (``stack_boxes`` of the
    backend, for the list form and other dtypes) and checked there (one kernel, a 4-byte
    copy back and a sync); a GPU backend without ``stack_boxes`` takes those two kinds
    through the host.  The host path words the errors.
    """
    is_list = isinstance(boxes, (list, tuple))
    items = list(boxes) if is_list else [boxes]
    host_items = []
    for i, b in enumerate(items):
        label = f"boxes[{i}]" if is_list else "boxes"
        native = native_like(call.module, call.device, b, label)
        dt = np.dtype(native.dtype)
        if dt.kind not in "iuf":
            raise TypeError(f"{label} must hold real numbers, got dtype {dt}")
        host_items.append(native)
    _args.check_box_shapes([tuple(b.shape) for b in host_items], is_list)

    stack = getattr(call.module, "stack_boxes", None)
    native_k5 = not is_list and host_items[0].dtype == call.dtype
    if call.device is not None and (native_k5 or stack is not None):
        # built and checked on the device (one int comes back); copied to the host below
        # only to word the error
        if native_k5 and not check:
            return host_items[0]  # as given: no copy
        with call.module.use_device(call.device):
            if native_k5:
                boxes = call.module.ascontiguous(host_items[0])
            else:
                boxes = stack(host_items, is_list, call.dtype)
            if not check or call.module.count_bad_boxes(boxes, batch) == 0:
                return boxes
    if is_list:
        parts = [call.host_array(b).astype(np.float64, copy=False) for b in host_items]
        rois = np.concatenate(
            [np.concatenate([np.full((len(p), 1), n, np.float64), p], axis=1) for n, p in
             enumerate(parts)] or [np.zeros((0, 5))],
            axis=0,
        ).reshape(-1, 5)
    else:
        rois = call.host_array(host_items[0])
    if rois.dtype != call.dtype or not rois.flags.c_contiguous:
        with np.errstate(over="ignore"):  # a coordinate too large for the dtype becomes inf
            rois = np.ascontiguousarray(rois, dtype=call.dtype)
    if check:
        # checked as the kernels (and the device check) see them: in the input's dtype;
        # on the host by the backend's one-pass count where it has one (cpu), which
        # leaves NumPy's wording pass to the boxes that fail
        count = getattr(call.module, "count_bad_boxes", None) if call.device is None else None
        if count is None or count(call.module.ascontiguous(rois), batch):
            _args.check_rois(rois.astype(np.float64), batch)
    return call.from_host(rois)

