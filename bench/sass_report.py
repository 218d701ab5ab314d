"""What the cupy backend's kernels compile to: a hash and an instruction mix per kernel.

NVRTC (``cuda-bindings``) builds each ``.cu`` file for one real architecture with every
instantiation the launchers use (``fastconv.backends.cupy._nvrtc``); the cubin's
``.text.<kernel>`` sections are the kernels' machine code (SASS).  No GPU is needed.

* ``--hashes``: the SHA-256 of each kernel's code.  Save a run before a refactoring of a
  shared header and compare after (``--compare OLD.json``): a kernel whose hash is
  unchanged compiles to the same instructions, so its speed cannot have changed.
* ``--mix``: per kernel, how many instructions of each opcode (FFMA, LDS, LDS.128,
  LDG, STG, ...), from ``nvdisasm`` when one is found (``--nvdisasm PATH`` or on
  ``PATH``).  The ratio of FFMA to shared-memory loads in a GEMM's inner loop says
  whether it can keep the FMA units busy.

    python bench/sass_report.py --arch sm_90 --json /tmp/sass-before.json
    python bench/sass_report.py --arch sm_90 --compare /tmp/sass-before.json
    python bench/sass_report.py --arch sm_90 --mix --kernels conv2d_gemm
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cubin(file: str, arch: str) -> tuple[bytes, dict[str, str]]:
    """``(cubin bytes, {name expression: mangled symbol})`` of one ``.cu`` file."""
    from fastconv.backends.cupy import _nvrtc

    include = _nvrtc.cuda_include_dir()
    if include is None:
        raise SystemExit("no cuda_fp16.h found: pip install 'cuda-bindings' 'numba-cuda[cu13]'")
    lowered, _log, code = _nvrtc.compile_cubin(file, arch, _nvrtc.kernel_files()[file], include)
    return code, lowered


def text_sections(elf: bytes) -> dict[str, bytes]:
    """``{symbol: code}`` of every ``.text.<symbol>`` section of a 64-bit ELF."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i):
        _name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize)
        return _name, off, size

    _, stroff, _ = header(shstrndx)
    out = {}
    for i in range(shnum):
        name_off, off, size = header(i)
        end = elf.index(b"\0", stroff + name_off)
        name = elf[stroff + name_off:end].decode()
        if name.startswith(".text."):
            out[name[len(".text."):]] = elf[off:off + size]
    return out


_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def instruction_mix(elf: bytes, nvdisasm: str) -> dict[str, collections.Counter]:
    """``{symbol: Counter(opcode)}`` from ``nvdisasm`` of the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(elf)
    try:
        text = subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True,
                              text=True).stdout
    finally:
        os.unlink(f.name)
    mix: dict[str, collections.Counter] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("\t.section\t.text."):
            current = line.split(".text.", 1)[1].split(",")[0].strip()
            mix[current] = collections.Counter()
        elif current and (m := _OPCODE.match(line)):
            mix[current][m.group(1)] += 1
    return mix


def report(arch: str, kernels: str | None, want_mix: bool, nvdisasm: str | None,
           files=None) -> dict:
    """``{name expression: {"file", "bytes", "sha256"[, "mix"]}}`` for the kernels of
    ``files`` (default: every ``.cu`` file) whose name contains one of ``kernels``."""
    from fastconv.backends.cupy import _nvrtc

    result = {}
    for file in files or _nvrtc.kernel_files():
        elf, lowered = cubin(file, arch)
        code = text_sections(elf)
        mix = instruction_mix(elf, nvdisasm) if want_mix and nvdisasm else {}
        for name, symbol in lowered.items():
            if kernels and not any(k in name for k in kernels.split(",")):
                continue
            entry = {"file": file, "bytes": len(code[symbol]),
                     "sha256": hashlib.sha256(code[symbol]).hexdigest()}
            if symbol in mix:
                entry["mix"] = dict(sorted(mix[symbol].items()))
            result[name] = entry
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--kernels", help="comma-separated substrings of name expressions")
    ap.add_argument("--mix", action="store_true", help="instruction counts (needs nvdisasm)")
    ap.add_argument("--nvdisasm", default=shutil.which("nvdisasm"))
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--compare", help="a saved --json report: list kernels whose code changed")
    args = ap.parse_args(argv)
    if args.mix and not args.nvdisasm:
        raise SystemExit("--mix needs nvdisasm (--nvdisasm PATH)")
    res = report(args.arch, args.kernels, args.mix, args.nvdisasm)
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "kernels": res}, indent=1))
    if args.compare:
        old = json.loads(Path(args.compare).read_text())["kernels"]
        same = [k for k in res if k in old and old[k]["sha256"] == res[k]["sha256"]]
        changed = [k for k in res if k in old and old[k]["sha256"] != res[k]["sha256"]]
        new = [k for k in res if k not in old]
        gone = [k for k in old if k not in res]
        print(f"{len(same)} unchanged, {len(changed)} changed, {len(new)} new, "
              f"{len(gone)} gone")
        for title, names in (("changed", changed), ("new", new), ("gone", gone)):
            for k in names:
                print(f"  {title}: {k}")
        return 1 if changed or gone else 0
    for name, e in res.items():
        line = f"{name:60s} {e['bytes']:7d} B  {e['sha256'][:12]}"
        if "mix" in e:
            top = ("FFMA", "DFMA", "HFMA2", "LDS", "LDS.128", "LDS.64", "LDG.E", "LDG.E.CONSTANT",
                   "STG.E", "STG.E.128", "BAR.SYNC")
            line += "  " + " ".join(f"{k}={e['mix'][k]}" for k in top if k in e["mix"])
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
