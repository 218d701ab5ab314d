"""What the CUDA simulator is made to check of a kernel's memory accesses (``conftest.py``).

numba's simulator runs a kernel's Python source on numpy arrays, which differ from a GPU's
memory in three ways that can hide a bug:

* **negative indices** wrap around to the end of an axis, where a GPU reads or writes
  outside the array.  Here they raise ``IndexError`` (global, shared and local arrays).
* **shared memory** lives as long as the launch, so a block starts with what the previous
  block left (and dynamic shared memory starts as zeros), where a GPU gives each block
  uninitialised memory.  Here each block's shared arrays start poisoned: NaN in float
  arrays, -2**30 in integer ones, so a read of an element no thread wrote shows in the
  output, as in the CuPy emulator.
* **races**: the simulator's threads interleave as the interpreter switches them, so a
  missing ``syncthreads`` rarely changes a result.  Here every shared-memory access is
  recorded with its thread and its *epoch* (how many barriers the thread has passed), and
  an access that conflicts with another thread's in the same epoch raises
  :class:`SharedMemoryRace`: a read of an element another thread wrote, or a write of one
  another thread wrote or read, with no barrier in between.  Atomics are not modelled (the
  kernels use none on shared memory).

:func:`install` patches the simulator for the session and returns the function that takes
the patches back.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: the value an unwritten shared integer holds (floats get NaN)
POISON_INT = -(2**30)


class SharedMemoryRace(RuntimeError):
    """Two threads of a block touched one shared element with no barrier between them."""


def check_index(idx, shape) -> None:
    for i in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(i, int | np.integer) and i < 0:
            raise IndexError(f"negative index {idx} into an array of shape {tuple(shape)} "
                             "(on a GPU: an access outside the array)")


def _thread():
    """``(block index, thread number, barriers passed)`` of the simulated thread running."""
    t = threading.current_thread()
    return tuple(t.blockIdx), t.thread_id, getattr(t, "barriers_passed", 0)


class _BlockAccesses:
    """The shared-memory accesses of one block, per byte address: ``[writer, its epoch,
    epoch of the reads, readers in that epoch]`` (a new one for each block)."""

    def __init__(self):
        self.records: dict = {}

    def note(self, address: int, write: bool, where: str) -> None:
        block, tid, epoch = _thread()
        rec = self.records.get(address)
        if rec is None:
            rec = self.records[address] = [None, -1, -1, set()]
        writer, write_epoch, read_epoch, readers = rec
        other_writer = write_epoch == epoch and writer != tid
        if write:
            other_readers = read_epoch == epoch and bool(readers - {tid})
            if other_writer or other_readers:
                raise SharedMemoryRace(
                    f"block {block}: thread {tid} writes {where} that thread "
                    f"{writer if other_writer else sorted(readers - {tid})[0]} "
                    f"{'wrote' if other_writer else 'read'} with no syncthreads between "
                    f"(epoch {epoch})")
            rec[0], rec[1] = tid, epoch
        else:
            if other_writer:
                raise SharedMemoryRace(
                    f"block {block}: thread {tid} reads {where} that thread {writer} wrote "
                    f"with no syncthreads between (epoch {epoch})")
            if read_epoch != epoch:
                rec[2], rec[3] = epoch, {tid}
            else:
                readers.add(tid)


class KernelArray(np.ndarray):
    """A simulated kernel's shared or local array: refuses negative indices; a shared one
    also reports its accesses to its block's :class:`_BlockAccesses`."""

    accesses: _BlockAccesses | None = None
    address = 0

    def __array_finalize__(self, obj):
        self.accesses = getattr(obj, "accesses", None)
        self.address = self.__array_interface__["data"][0]

    def _note(self, idx, write):
        if self.accesses is None:
            return
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != self.ndim or not all(isinstance(i, int | np.integer) for i in idx):
            raise TypeError(f"shared array indexed with {idx}: the race check follows "
                            "one element at a time")
        offset = sum(int(i) * s for i, s in zip(idx, self.strides, strict=True))
        self.accesses.note(self.address + offset, write, f"[{', '.join(map(str, idx))}]")

    def __getitem__(self, idx):
        check_index(idx, self.shape)
        self._note(idx, False)
        return super().__getitem__(idx)

    def __setitem__(self, idx, val):
        check_index(idx, self.shape)
        self._note(idx, True)
        super().__setitem__(idx, val)


def _poison(a: np.ndarray) -> None:
    a.fill(np.nan if a.dtype.kind == "f" else POISON_INT)


def install():
    """Patch the simulator as the module docstring says; returns the undo function."""
    from numba.cuda.simulator import kernel, kernelapi
    from numba.cuda.simulator.cudadrv import devicearray

    wrapper = devicearray.FakeWithinKernelCUDAArray
    saved = [(wrapper, "__getitem__"), (wrapper, "__setitem__"),
             (kernelapi.FakeCUDAShared, "array"), (kernelapi.FakeCUDALocal, "array"),
             (kernel.BlockThread, "syncthreads")]
    saved = [(cls, name, cls.__dict__[name]) for cls, name in saved]
    real_get, real_set, real_shared, real_local, real_sync = (s[2] for s in saved)

    def getitem(self, idx):
        check_index(idx, self._item.shape)
        return real_get(self, idx)

    def setitem(self, idx, val):
        check_index(idx, self._item.shape)
        real_set(self, idx, val)

    new_block = threading.Lock()  # a block's start, and its static arrays' creation

    def block_state(shared):
        """The per-launch FakeCUDAShared's view of the running block: when a new block
        starts (the first of its threads to get here, under a lock), the launch's shared
        arrays are poisoned and the access record starts afresh."""
        block = tuple(threading.current_thread().blockIdx)
        with new_block:
            state = shared.__dict__.get("fc_state")
            if state is None or state["block"] != block:
                state = shared.__dict__["fc_state"] = {"block": block,
                                                       "accesses": _BlockAccesses()}
                for a in shared._allocations.values():
                    _poison(a)
                shared._dynshared.fill(-1)  # all bits set: NaN in every float type
        return state

    def shared_array(self, shape, dtype, alignment=None):
        state = block_state(self)
        if shape == 0:  # dynamic shared memory: one buffer for every call
            a = real_shared(self, shape, dtype, alignment).view(KernelArray)
        else:
            # the simulator tells a block's static arrays apart by the line that makes them
            # (the caller's, so it cannot be wrapped: its own lookup would see this line)
            frame = sys._getframe(1)
            where = (frame.f_code.co_filename, frame.f_lineno)
            with new_block:  # one array for all the threads that get here at once
                a = self._allocations.get(where)
                if a is None:
                    a = real_local(None, shape, dtype, alignment).view(KernelArray)
                    _poison(a)
                    self._allocations[where] = a
        a.accesses = state["accesses"]
        return a

    def local_array(self, shape, dtype, alignment=None):
        return real_local(self, shape, dtype, alignment).view(KernelArray)

    def syncthreads(self):
        real_sync(self)
        self.barriers_passed = getattr(self, "barriers_passed", 0) + 1

    wrapper.__getitem__, wrapper.__setitem__ = getitem, setitem
    kernelapi.FakeCUDAShared.array = shared_array
    kernelapi.FakeCUDALocal.array = local_array
    kernel.BlockThread.syncthreads = syncthreads

    def undo():
        for cls, name, value in saved:
            setattr(cls, name, value)

    return undo
