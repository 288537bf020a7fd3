from __future__ import annotations

import socket
from pathlib import Path

import pytest

from node.config import CONFIG_FILE, ConfigError, check_ports_free, load_config, render_config


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / CONFIG_FILE).write_text(text)
    return tmp_path


def test_rendered_config_loads_back() -> None:
    text = render_config(
        "n1",
        ["/ip4/127.0.0.1/tcp/0"],
        ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAqq6X9Q4pJCfecxhwMXBQJEAkvfj3aLMA2TEfuFnzrsw"],
        0,
    )
    assert text.count("#") > 10  # commented for people
    import tomllib

    from node.config import parse_config

    config = parse_config(tomllib.loads(text), Path("/d"), "x")
    assert config.name == "n1" and len(config.network.bootstrap) == 1
    assert config.market.serve_paid is False and config.market.deposit == 100
    paid = render_config("n1", ["/ip4/127.0.0.1/tcp/0"], [], 0, serve_paid=True)
    assert parse_config(tomllib.loads(paid), Path("/d"), "x").market.serve_paid is True
    assert config.genesis_path == Path("/d/genesis.json")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[node\nname = 1", "", "not valid TOML"),
        ("[node]\nnmae = 'x'\n", "node.nmae", "unknown key"),
        ("[nodes]\nname = 'x'\n", "nodes", "unknown section"),
        ("[network]\nlisten = ['/ip4/1.2.3/tcp/1']\n", "network.listen[0]", "bad multiaddr"),
        ("[network]\nbootstrap = ['/ip4/127.0.0.1/tcp/1']\n", "network.bootstrap[0]", "/p2p/"),
        ("[network]\nmdns = 'yes'\n", "network.mdns", "true or false"),
        ("[network]\nping_interval_s = 0\n", "network.ping_interval_s", "greater than 0"),
        ("[api]\nport = 70000\n", "api.port", "not a TCP port"),
        ("[log]\nformat = 'xml'\n", "log.format", "'xml'"),
        ("[market]\nserve_paid = 1\n", "market.serve_paid", "true or false"),
        ("[market]\ndeposit = 0\n", "market.deposit", "must be 1.."),
        ("[market]\nchannel_lifetime_s = 1\n", "market.channel_lifetime_s", "must be 10.."),
        ("[market]\nprice = 3\n", "market.price", "unknown key"),
    ],
)
def test_broken_config_names_file_key_and_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(tmp_path / CONFIG_FILE) in str(info.value)


def test_missing_config_says_to_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="swarm-node init"):
        load_config(tmp_path)


def test_port_in_use_is_found_before_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = load_config(write(tmp_path, f"[api]\nport = {port}\n"))
        with pytest.raises(ConfigError) as info:
            check_ports_free(config)
        assert info.value.key == "api.port" and str(port) in info.value.problem
        config = load_config(
            write(tmp_path, f"[network]\nlisten = ['/ip4/127.0.0.1/tcp/{port}']\n")
        )
        with pytest.raises(ConfigError, match=r"network.listen\[0\]"):
            check_ports_free(config)


def test_expert_choices_name_every_zoo_domain() -> None:
    import experts
    from node.config import EXPERT_CHOICES

    assert [c for c in EXPERT_CHOICES if c != "ffn64"] == list(experts.DOMAINS)
