from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from converter.cli import cli
from firmware_profiles import PROFILE_DIR, ProfileError, QuantScheme, list_profiles, load_profile

REQUIRED = {
    "raspberry-pi-4",
    "raspberry-pi-5",
    "jetson-nano-cpu",
    "coral-edgetpu",
    "x86-avx2",
    "esp32-s3-tflm",
}


def test_shipped_profiles_validate() -> None:
    names = {p.name for p in list_profiles()}
    assert names >= REQUIRED
    for p in list_profiles():
        assert (PROFILE_DIR / f"{p.name}.yaml").is_file()


def test_coral_and_mcu_are_full_integer() -> None:
    coral = load_profile("coral-edgetpu")
    assert coral.quantization.scheme is QuantScheme.INT8
    assert coral.quantization.input_dtype.value in ("uint8", "int8")
    assert coral.ops.allowlist and "CONV_2D" in coral.ops.allowlist
    mcu = load_profile("esp32-s3-tflm")
    assert mcu.runtime.engine == "tflite-micro"
    assert not mcu.quantization.allow_float_fallback
    assert mcu.budgets.max_arena_bytes is not None


def _write(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((PROFILE_DIR / "raspberry-pi-4.yaml").read_text())
    mutate(data)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_profile_from_path(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d.update(name="my-board"))
    assert load_profile(path).name == "my-board"


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["budgets"].update(latency_ms=-1), "budgets.latency_ms"),
        (lambda d: d["runtime"].update(threds=4), "runtime.threds"),
        (lambda d: d["quantization"].update(scheme="int7"), "quantization.scheme"),
        (lambda d: d["quantization"].update(scheme="int8", input_dtype="float32"), "quantization"),
    ],
)
def test_bad_profile_names_the_key(tmp_path: Path, mutate, key: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, mutate)
    with pytest.raises(ProfileError, match=key.replace(".", r"\.")):
        load_profile(path)


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(ProfileError, match="raspberry-pi-4"):
        load_profile("raspberry-pi-9")


def test_cli_list_and_show() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["profiles", "list"])
    assert res.exit_code == 0, res.output
    for name in REQUIRED:
        assert name in res.output
    res = runner.invoke(cli, ["profiles", "show", "coral-edgetpu"])
    assert res.exit_code == 0, res.output
    assert "DEPTHWISE_CONV_2D" in res.output and "uint8" in res.output


def test_cli_show_bad_profile_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d["budgets"].update(max_model_bytes=0))
    res = CliRunner().invoke(cli, ["profiles", "show", str(path)])
    assert res.exit_code == 2
    assert "budgets.max_model_bytes" in res.output
    assert "Traceback" not in res.output
