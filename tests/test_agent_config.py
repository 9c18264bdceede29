"""The agent's config: validation with key paths, flag overrides, secrets, and validate-config."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import FLAG_KEYS, cli, overrides_from_flags
from agent.config import AgentConfig, ConfigError, PublishMode, load_config, parse_broker_url

EXAMPLE = """\
device_id: cam-01
fleet: warehouse
bundle:
  path: /var/lib/edgegap/bundle
  trusted_keys: [/etc/edgegap/edgegap.pub]
source:
  uri: 0
mqtt:
  broker: mqtts://agent@broker.example:8883
  password_file: /run/credentials/edgegap/mqtt
publish:
  mode: on_change
metrics:
  enabled: true
"""


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(EXAMPLE)
    cfg = load_config(path)
    assert cfg.device_id == "cam-01" and cfg.fleet == "warehouse"
    assert cfg.source.uri == "0"  # a YAML integer camera index is kept as text
    assert cfg.publish.mode is PublishMode.ON_CHANGE
    assert cfg.metrics.enabled and cfg.metrics.port == 9108
    assert not cfg.preview.enabled
    cfg.require_runnable()


def test_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(EXAMPLE)
    flags = {name: None for name in FLAG_KEYS}
    flags.update(
        {
            "source": "clip.avi",
            "threads": 3,
            "broker": "mqtt://localhost:1999",
            "trusted_key": (Path("a.pub"),),
        }
    )
    cfg = load_config(path, overrides_from_flags(flags))
    assert cfg.source.uri == "clip.avi" and cfg.runtime.threads == 3
    assert cfg.mqtt.broker == "mqtt://localhost:1999"
    assert cfg.bundle.trusted_keys == [Path("a.pub")]
    assert cfg.fleet == "warehouse"  # untouched keys keep the file's value


def test_every_flag_maps_to_a_real_key() -> None:
    fields = AgentConfig.model_json_schema()
    for dotted in FLAG_KEYS.values():
        node = fields
        for part in dotted.split("."):
            props = (
                node.get("properties") or fields["$defs"][node["$ref"].split("/")[-1]]["properties"]
            )
            assert part in props, dotted
            node = props[part]
            if "$ref" not in node and "anyOf" in node:
                node = next((n for n in node["anyOf"] if "$ref" in n), node)


def test_errors_name_the_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "fleet: a/b\nsource:\n  rat: max\ndetection:\n  score_threshold: 2\nmqtt:\n  password: hunter2\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert any(p.startswith("fleet:") for p in problems)
    assert "source.rat: unknown key" in problems
    assert any(p.startswith("detection.score_threshold:") and "(got 2)" in p for p in problems)
    assert any(p.startswith("mqtt.password: secrets are not read") for p in problems)
    assert not any("hunter2" in p for p in problems)  # a secret is never echoed


def test_password_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGAP_MQTT_PASSWORD", "from-env")
    cfg = load_config(None, {"mqtt.broker": "mqtt://u@h"})
    assert cfg.mqtt.read_password() == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    cfg = load_config(None, {"mqtt.broker": "mqtt://u@h", "mqtt.password_file": str(secret)})
    assert cfg.mqtt.read_password() == "from-file"


def test_broker_urls() -> None:
    a = parse_broker_url("mqtt://user@host.lan")
    assert (a.host, a.port, a.tls, a.username) == ("host.lan", 1883, False, "user")
    assert parse_broker_url("mqtts://h:9999").port == 9999
    assert parse_broker_url("mqtts://h").port == 8883
    with pytest.raises(ValueError, match="password"):
        parse_broker_url("mqtt://u:secret@h")
    with pytest.raises(ValueError, match="mqtt://"):
        parse_broker_url("http://h")


def test_validate_config_cli(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(EXAMPLE)
    bad.write_text("source:\n  uri: 0\n  loop: maybe\nbogus: 1\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["validate-config", str(good)])
    assert res.exit_code == 0 and "ok" in res.output
    res = runner.invoke(cli, ["validate-config", str(good), "--show"])
    assert "score_threshold: 0.5" in res.output
    res = runner.invoke(cli, ["validate-config", str(bad)])
    assert res.exit_code == 78
    assert "source.loop: Input should be a valid boolean" in res.output
    assert "bogus: unknown key" in res.output
    res = runner.invoke(cli, ["validate-config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 78 and "config file not found" in res.output
    (tmp_path / "broken.yaml").write_text("source: [unclosed\n")
    res = runner.invoke(cli, ["validate-config", str(tmp_path / "broken.yaml")])
    assert res.exit_code == 78 and "not valid YAML" in res.output and "Traceback" not in res.output


def test_run_without_bundle_or_source_is_a_config_error() -> None:
    res = CliRunner().invoke(cli, ["run", "--source", "0"])
    assert res.exit_code == 78
    assert "bundle.path: required" in res.output and "Traceback" not in res.output


def test_threads_come_from_the_config_else_the_profile_capped_at_this_machines_cpus() -> None:
    from agent.bundle.manifest import (
        Decoder,
        InputSpec,
        Manifest,
        ModelFile,
        OutputRole,
        OutputSpec,
    )
    from agent.served import resolve_threads

    def manifest(profile: str) -> Manifest:
        return Manifest(
            name="m", version=1, profile=profile, created="2026-01-01T00:00:00Z", task="classification",
            decoder=Decoder.CLASSIFICATION, model=ModelFile(sha256="0" * 64, size=1),
            input=InputSpec(shape=[1, 8, 8, 1], dtype="int8", scale=0.004, zero_point=-128, mean=[0], std=[255]),
            outputs=[OutputSpec(name="out", index=5, role=OutputRole.LOGITS, shape=[1, 3], dtype="int8")],
        )  # fmt: skip

    plain = AgentConfig()
    assert resolve_threads(plain, manifest("raspberry-pi-4"), cpus=8) == 4  # the profile's 4
    assert resolve_threads(plain, manifest("raspberry-pi-4"), cpus=2) == 2  # one per CPU at most
    assert resolve_threads(plain, manifest("no-such-board"), cpus=8) == 1
    given = AgentConfig.model_validate({"runtime": {"threads": 3}})
    assert resolve_threads(given, manifest("raspberry-pi-4"), cpus=2) == 3  # asked for: as asked
