"""Controller settings: limits per field, cross-field checks naming both values, the YAML
file shape (defaults merged under nodes, unknown keys refused), the example config files
under deploy/, and ``python -m controller --check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.settings import ConfigError, NodeSettings, load_config, settings_from_dict

ROOT = Path(__file__).resolve().parents[1]


def raw(**node: object) -> dict[str, object]:
    return {"nodes": [{"name": "den", "role": "denoiser", "model": "tiny", **node}]}


def test_defaults_fill_deployment_and_queue() -> None:
    s = NodeSettings(name="den", role="denoiser", model="tiny")
    assert s.deployment == "den" and s.queues == ("denoiser:tiny",)


@pytest.mark.parametrize("field,value,needle", [
    ("max_replicas", 0, "max_replicas=0 is outside 1..1000"),
    ("min_replicas", -1, "min_replicas=-1 is outside 0..1000"),
    ("target_depth_per_replica", 0, "target_depth_per_replica=0"),
    ("tolerance", 1.5, "tolerance=1.5"),
    ("up_stabilization_s", float("nan"), "must be finite"),
    ("min_replicas", 1.5, "min_replicas must be an integer"),
    ("activation_threshold", "3", "activation_threshold must be a number"),
    ("role", "painter", "role 'painter' is not one of"),
    ("deployment", "Bad_Name", "deployment 'Bad_Name' is not a DNS-1123 label"),
])
def test_each_limit_is_enforced_with_a_message_naming_the_field(
        field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw(**{field: value}))
    assert needle in str(info.value)


def test_min_above_max_names_both_fields_and_values() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw(min_replicas=5, max_replicas=3))
    assert "min_replicas (5) must not exceed max_replicas (3)" in str(info.value)


def test_two_nodes_on_one_deployment_name_both_nodes() -> None:
    cfg = {"nodes": [{"name": "a", "role": "vae", "model": "m", "deployment": "pod"},
                     {"name": "b", "role": "controlnet", "model": "c", "deployment": "pod"}]}
    with pytest.raises(ConfigError, match="nodes 'a' and 'b' both scale deployment default/pod"):
        settings_from_dict(cfg)


def test_unknown_keys_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_replica;"):
        settings_from_dict(raw(max_replica=3))
    with pytest.raises(ConfigError, match="unknown key"):
        settings_from_dict({**raw(), "tick": 1})


def test_defaults_merge_under_each_node_and_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tick_s: 2\nnamespace: ns\ndefaults: {max_replicas: 7, tolerance: 0.2}\n"
                    "nodes:\n  - {name: den, role: denoiser, model: tiny, tolerance: 0}\n"
                    "  - {name: vae, role: vae, model: tiny, namespace: other,\n"
                    "     queues: [vae:tiny, vae:tiny-inpainting]}\n")
    s = load_config(path, tick_s=0.5, namespace=None)
    den, vae = s.nodes
    assert s.tick_s == 0.5 and s.namespace == "ns"
    assert (den.max_replicas, den.tolerance, vae.tolerance) == (7, 0.0, 0.2)
    assert s.namespace_of(den) == "ns" and s.namespace_of(vae) == "other"
    assert vae.queues == ("vae:tiny", "vae:tiny-inpainting")


def test_unreadable_or_empty_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="at least one model node"):
        load_config(tmp_path / "empty.yaml")


@pytest.mark.parametrize("name", ["controller.example.yaml", "controller.local.yaml"])
def test_example_configs_load(name: str) -> None:
    s = load_config(ROOT / "deploy" / name)
    assert len(s.nodes) == 4


def test_cli_check_validates_and_exits(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    assert main(["--config", str(ROOT / "deploy/controller.example.yaml"), "--check"]) == 0
    assert '"deployment": "dfleet-denoiser-sd15"' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [{name: x, role: vae, model: m, min_replicas: 3, max_replicas: 2}]")
    assert main(["--config", str(bad), "--check"]) == 2
    assert "min_replicas (3) must not exceed max_replicas (2)" in capsys.readouterr().err
