from pathlib import Path

import pytest

from edgesplit.config import (
    TOKEN_ENV,
    LinkSpec,
    PowerModel,
    dump_cluster,
    load_cluster,
    parse_cluster,
)
from edgesplit.errors import ConfigError

BASE = {"token": "t0k", "devices": [{"name": "pi1", "address": "127.0.0.1:5001"}]}


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    spec = parse_cluster(
        {
            **BASE,
            "default_link": {"bandwidth_mbps": 940, "latency_ms": 0.2},
            "links": [{"between": ["pi1", "coordinator"], "bandwidth_mbps": 10}],
        }
    )
    dump_cluster(spec, tmp_path / "c.yaml")
    assert load_cluster(tmp_path / "c.yaml") == spec


def test_links_are_symmetric_and_default() -> None:
    spec = parse_cluster(
        {
            "token": "x",
            "devices": [
                {"name": "a", "address": "h:1"},
                {"name": "b", "address": "h:2"},
                {"name": "c", "address": "h:3"},
            ],
            "default_link": {"bandwidth_mbps": 100},
            "links": [{"between": ["b", "a"], "bandwidth_mbps": 5, "latency_ms": 3}],
        }
    )
    assert spec.link("a", "b") == LinkSpec(bandwidth_mbps=5, latency_ms=3)
    assert spec.link("b", "a") == spec.link("a", "b")
    assert spec.link("a", "c") == LinkSpec(bandwidth_mbps=100)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"devices": [{"name": "pi1", "adress": "h:1"}]}, "devices.0.adress"),
        ({"devices": [{"name": "pi1", "address": "nohost"}]}, "HOST:PORT"),
        ({"devices": [{"name": "pi1", "address": "h:70000"}]}, "1..65535"),
        ({"devices": []}, "devices"),
        (
            {"devices": [{"name": "a", "address": "h:1"}, {"name": "a", "address": "h:2"}]},
            "repeated: ['a']",
        ),
        (
            {"devices": [{"name": "a", "address": "h:1"}], "links": [{"between": ["a", "z"]}]},
            "names 'z'",
        ),
        ({"devices": [{"name": "coordinator", "address": "h:1"}]}, "reserved"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_errors_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster(doc)
    assert message in str(info.value)


def test_malformed_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("devices: [name: pi1\n")
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    assert "not valid YAML" in str(info.value) and "line" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster file"):
        load_cluster(tmp_path / "nope.yaml")


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    spec = parse_cluster(
        {
            "token_file": str(token_file),
            "devices": [
                {"name": "a", "address": "h:1", "token": "own"},
                {"name": "b", "address": "h:2"},
            ],
        }
    )
    assert spec.token_for("a") == "own"
    assert spec.token_for("b") == "from-file"
    bare = parse_cluster({"devices": [{"name": "a", "address": "h:1"}]})
    assert bare.token_for("a") == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match="no token for device 'a'"):
        bare.token_for("a")
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        parse_cluster({"token_file": str(empty), **{"devices": BASE["devices"]}}).token_for("pi1")


def test_power_model_is_linear_and_clamped() -> None:
    power = PowerModel()
    assert power.power_w(0.0) == pytest.approx(2.7)
    assert power.power_w(1.0) == pytest.approx(6.4)
    assert power.power_w(0.5) == pytest.approx(4.55)
    assert power.power_w(2.0) == pytest.approx(6.4)
