"""Every csrc/ program and the instantiations its launcher can pick or a sweep can force: what CI compiles
(tests/kernels/test_compile.py) and the probes look kernels up in.  Each program `<stem>.cu` has its launcher
`flashllm/kernels/<stem>.py`, which names it (PROGRAM) and lists its instantiations (variants)."""

from __future__ import annotations

from . import attention, decode_bench, decompress, norm, reduce, sell, spmm_mma, spmm_wide

LAUNCHERS = (spmm_mma, spmm_wide, sell, decompress, reduce, norm, attention, decode_bench)


def all_variants() -> list[tuple[str, str]]:
    """(instantiation, program) of every kernel."""
    return [(name, launcher.PROGRAM) for launcher in LAUNCHERS for name in launcher.variants()]


def program_for(name: str) -> str:
    """The program that holds a kernel instantiation (by its template's name)."""
    template = name.split("<")[0]
    for variant, program in all_variants():
        if variant.split("<")[0] == template:
            return program
    raise ValueError(f"no csrc/ program has a kernel {template!r}")
