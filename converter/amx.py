"""Intel AMX and XNNPACK's int8 kernels: see whether this process uses AMX, and withhold it.

On CPUs with AMX (Xeon Sapphire Rapids and later) XNNPACK runs int8 convolutions on AMX tiles.
Those kernels compute 64 output channels at a time, so a layer 8 or 16 channels wide costs what a
64-wide one does, and narrow int8 models (the reference detector) run faster on XNNPACK's AVX-512
kernels (docs/converter.md, "Intel AMX on the host"). Linux lets a process use AMX tile data only
after it asks (arch_prctl ARCH_REQ_XCOMP_PERM), and XNNPACK asks once, when it first sizes up the
CPU. `withhold_amx()` installs a seccomp filter that refuses that one request, so XNNPACK keeps to
its other kernels. It must run before the first model is opened in the process, cannot be undone,
and is inherited by child processes.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import platform
import struct
import sys
from pathlib import Path

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

_SYS_ARCH_PRCTL = 158  # x86_64 syscall numbers
_SYS_SECCOMP = 317
_ARCH_GET_XCOMP_PERM = 0x1022
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_AUDIT_ARCH_X86_64 = 0xC000003E
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1  # every thread of the process, not only the caller
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1


class AmxState(enum.Enum):
    ABSENT = "absent"  # not a Linux x86_64 CPU with AMX int8
    AVAILABLE = "available"  # nobody has asked yet; XNNPACK will, and will use it
    IN_USE = "in use"  # the process holds AMX tile permission
    WITHHELD = "withheld"  # the request is refused; XNNPACK uses its other kernels


class AmxError(EdgegapError):
    """AMX could not be withheld (already in use by this process, or the kernel refused)."""


_INHERITED = "EDGEGAP_AMX_WITHHELD"  # set for child processes, which inherit the filter


def _withheld() -> bool:
    return os.environ.get(_INHERITED) == "1"


def amx_in_flags(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text lists AMX int8 among the CPU's flags."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "amx_int8" in line.split(":", 1)[-1].split()
    return False


def cpu_has_amx() -> bool:
    """Whether this is a Linux x86_64 CPU with AMX int8."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return amx_in_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return False


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _long(value: int) -> ctypes.c_long:
    """Variadic prctl() and syscall() read long arguments; a bare Python int is passed as an int."""
    return ctypes.c_long(value)


def _tile_permission() -> bool:
    """Whether this process already holds AMX tile-data permission."""
    bits = ctypes.c_uint64(0)
    if (
        _libc().syscall(_long(_SYS_ARCH_PRCTL), _long(_ARCH_GET_XCOMP_PERM), ctypes.byref(bits))
        != 0
    ):
        return False
    return bool(bits.value & (1 << _XFEATURE_XTILEDATA))


def amx_state() -> AmxState:
    """What XNNPACK in this process gets. Permission actually held wins over the inherited mark."""
    if not cpu_has_amx():
        return AmxState.ABSENT
    if _tile_permission():
        return AmxState.IN_USE
    return AmxState.WITHHELD if _withheld() else AmxState.AVAILABLE


def _filter_program() -> bytes:
    """Classic BPF: refuse arch_prctl(ARCH_REQ_XCOMP_PERM, ...) with EPERM; allow everything else."""

    def stmt(code: int, k: int) -> bytes:
        return struct.pack("HBBI", code, 0, 0, k)

    def jeq(k: int, jt: int, jf: int) -> bytes:
        return struct.pack("HBBI", 0x15, jt, jf, k)  # BPF_JMP | BPF_JEQ | BPF_K

    load = 0x20  # BPF_LD | BPF_W | BPF_ABS, offsets into struct seccomp_data
    ret = 0x06  # BPF_RET | BPF_K
    return b"".join([
        stmt(load, 4), jeq(_AUDIT_ARCH_X86_64, 0, 4),  # arch
        stmt(load, 0), jeq(_SYS_ARCH_PRCTL, 0, 2),  # syscall number
        stmt(load, 16), jeq(_ARCH_REQ_XCOMP_PERM, 1, 0),  # low word of the first argument
        stmt(ret, _SECCOMP_RET_ALLOW),
        stmt(ret, _SECCOMP_RET_ERRNO | _EPERM),
    ])  # fmt: skip


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def withhold_amx() -> AmxState:
    """Keep XNNPACK off AMX for the rest of this process; a no-op on CPUs without AMX.

    Sets no_new_privs (programs this process starts cannot gain privileges), as the kernel
    requires of an unprivileged seccomp filter.
    """
    state = amx_state()
    if state in (AmxState.ABSENT, AmxState.WITHHELD):
        return state
    if state is AmxState.IN_USE:
        raise AmxError(
            "AMX is already in use in this process; withhold it before the first model is opened"
        )
    libc = _libc()
    program = ctypes.create_string_buffer(_filter_program())
    fprog = _SockFprog(len(program.raw) // 8, ctypes.cast(program, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, *map(_long, (1, 0, 0, 0))) != 0:
        raise AmxError(
            f"cannot withhold AMX: prctl(NO_NEW_PRIVS) failed, errno {ctypes.get_errno()}"
        )
    mode, flags = _long(_SECCOMP_SET_MODE_FILTER), _long(_SECCOMP_FILTER_FLAG_TSYNC)
    if libc.syscall(_long(_SYS_SECCOMP), mode, flags, ctypes.byref(fprog)) != 0:
        raise AmxError(f"cannot withhold AMX: seccomp filter refused, errno {ctypes.get_errno()}")
    os.environ[_INHERITED] = "1"
    logger.info("AMX withheld: XNNPACK will use its AVX-512/AVX2 int8 kernels")
    return AmxState.WITHHELD


def amx_label() -> str:
    """For benchmark headers and logs: 'AMX in use', 'AMX withheld', 'no AMX', ..."""
    state = amx_state()
    return "no AMX" if state is AmxState.ABSENT else f"AMX {state.value}"


WITHHOLD_HELP = (
    "Keep XNNPACK off Intel AMX, whose int8 kernels are 64 channels wide, as on a CPU without AMX "
    "(most edge devices). No effect on CPUs without AMX."
)
