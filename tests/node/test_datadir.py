from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dag.crypto import Scheme
from node.datadir import (
    ACCOUNT_KEY,
    API_TOKEN,
    HOST_KEY,
    KeyFileError,
    NodeExists,
    default_data_dir,
    init_data_dir,
    load_genesis,
    load_keys,
)


@pytest.mark.parametrize("scheme", list(Scheme))
def test_init_creates_private_keys_and_a_loadable_node(tmp_path: Path, scheme: Scheme) -> None:
    info = init_data_dir(tmp_path / "n", name="n", scheme=scheme)
    for name in (HOST_KEY, ACCOUNT_KEY, API_TOKEN):
        assert stat.S_IMODE((tmp_path / "n" / name).stat().st_mode) == 0o600
    keys = load_keys(tmp_path / "n")
    assert keys.account.scheme is scheme
    assert keys.account.account_id.hex() == info["account"]
    genesis = load_genesis(tmp_path / "n" / "genesis.json")
    assert genesis.account(keys.account.account_id) is not None


def test_second_init_refuses_and_changes_nothing(tmp_path: Path) -> None:
    init_data_dir(tmp_path, name="n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(NodeExists, match="already exists"):
        init_data_dir(tmp_path, name="n", scheme=Scheme.ED25519)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("name", [HOST_KEY, ACCOUNT_KEY])
@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"{not json",
        b'{"type": "ed25519", "seed": "00"}',
        b'{"scheme": "rsa", "seed": "00"}',
        b"\xff\xfe",
    ],
)
def test_corrupt_key_is_reported_and_never_replaced(tmp_path: Path, name: str, junk: bytes) -> None:
    init_data_dir(tmp_path, name="n")
    (tmp_path / name).write_bytes(junk)
    with pytest.raises(KeyFileError) as info:
        load_keys(tmp_path)
    assert name in str(info.value)
    assert (tmp_path / name).read_bytes() == junk


def test_data_dir_follows_swarm_node_home() -> None:
    assert default_data_dir({"SWARM_NODE_HOME": "/x/y"}) == Path("/x/y")
    assert default_data_dir({}).name == ".swarm-node"
