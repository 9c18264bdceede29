"""Withholding Intel AMX from XNNPACK: the seccomp filter's logic, and its effect in a real process."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_agent_kit import cached_bundle

from converter import amx, timing
from converter.gates import latency_label, measure_latency, withholds_amx
from firmware_profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
needs_amx = pytest.mark.skipif(not amx.cpu_has_amx(), reason="this CPU has no AMX to withhold")


def run_filter(program: bytes, nr: int, arch: int, arg0: int) -> int:
    """Evaluate the classic-BPF program on a seccomp_data record (the three opcodes it uses)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    for _ in range(len(insns)):
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # load a word of seccomp_data
            (acc,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code == 0x15:  # jump if equal
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:  # return
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program ran off its end")


def test_filter_refuses_only_the_tile_permission_request() -> None:
    program = amx._filter_program()
    x86_64, i386 = 0xC000003E, 0x40000003
    refused = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
    allowed = 0x7FFF0000
    assert run_filter(program, 158, x86_64, 0x1023) == refused  # arch_prctl(ARCH_REQ_XCOMP_PERM)
    assert run_filter(program, 158, x86_64, 0x1022) == allowed  # ARCH_GET_XCOMP_PERM
    assert run_filter(program, 158, x86_64, 0x1002) == allowed  # ARCH_SET_FS: threads need it
    assert run_filter(program, 0, x86_64, 0x1023) == allowed  # read() with that argument
    assert run_filter(program, 158, i386, 0x1023) == allowed  # another ABI's syscall numbers


def test_amx_is_read_from_the_flags_line() -> None:
    assert amx.amx_in_flags("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile amx_int8\n")
    assert not amx.amx_in_flags("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert not amx.amx_in_flags("Features\t: fp asimd evtstrm crc32\n")  # an Arm board


SCRIPT = """
import sys
import numpy as np
from agent.runtime import open_model
from converter.amx import AmxError, amx_state, withhold_amx
print(amx_state().value)
if sys.argv[2] == "before":
    print(withhold_amx().value)
model = open_model(open(sys.argv[1], "rb").read())
spec = model.inputs[0]
model.set_input(np.zeros(spec.shape, spec.dtype))
model.invoke()
print(amx_state().value)
if sys.argv[2] == "after":
    try:
        withhold_amx()
    except AmxError as exc:
        print(exc)
"""


def _states(model: Path, when: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model), when],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


@needs_amx
def test_withheld_before_the_first_model_xnnpack_stays_off_amx() -> None:
    model = cached_bundle("yolo").model_path
    assert _states(model, "before") == ["available", "withheld", "withheld"]


@needs_amx
def test_withholding_once_amx_is_in_use_is_refused() -> None:
    model = cached_bundle("yolo").model_path
    lines = _states(model, "after")
    assert lines[:2] == ["available", "in use"]
    assert "already in use" in lines[2] and "before the first model" in lines[2]


@needs_amx
@pytest.mark.parametrize(
    ("profile", "device_has_amx", "withheld", "label"),
    [
        ("x86-avx2", False, True, "device-class host (x86_64, AMX withheld)"),
        ("x86-avx2", True, False, "device-class host (x86_64, AMX in use)"),
        ("raspberry-pi-4", False, True, "host-measured (x86_64, AMX withheld)"),
    ],
)
def test_amx_is_withheld_where_the_device_has_none(
    profile: str, device_has_amx: bool, withheld: bool, label: str
) -> None:
    p = load_profile(profile)
    p = p.model_copy(update={"target": p.target.model_copy(update={"amx": device_has_amx})})
    assert withholds_amx(p) is withheld
    assert latency_label(p) == label


@needs_amx
def test_latency_without_amx_is_measured_in_a_child_process() -> None:
    """This process keeps its kernels; the child that times the model withholds AMX."""
    model = cached_bundle("yolo").model_path.read_bytes()
    before = amx.amx_state()
    assert before is not amx.AmxState.WITHHELD
    stats = measure_latency({"m": model}, runs=5, warmup=1, withhold_amx=True)["m"]
    assert stats.amx == "AMX withheld" and stats.backend.startswith("litert")
    assert len(stats.samples) == 5 and min(stats.samples) > 0
    assert amx.amx_state() is before
    here = measure_latency({"m": model}, runs=5, warmup=1)["m"]
    assert here.amx == "AMX in use" and amx.amx_state() is amx.AmxState.IN_USE


@needs_amx
def test_bench_times_an_x86_avx2_bundle_without_amx() -> None:
    bundle = cached_bundle("yolo")
    assert bundle.manifest.profile == "x86-avx2"
    out = subprocess.run(
        [sys.executable, "-m", "converter", "bench", str(bundle.path), "--runs", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "device-class host on x86_64, AMX withheld" in " ".join(out.stdout.split())


def test_a_timing_child_that_fails_says_why() -> None:
    with (
        timing.Worker([b"not a model"], 1, 1, None, withhold=True) as worker,
        pytest.raises(timing.TimingError, match="not a valid Flatbuffer"),
    ):
        worker.wait_ready()
