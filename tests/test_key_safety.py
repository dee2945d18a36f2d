"""Keys that must not be used where they do not belong (issue 12).

Well-known dev keys as validator, admin or signing keys on a Live chain; key and password
files other users can read; client addresses nobody (or everybody) can sign for.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deltachain.crypto.keys import (
    Keypair,
    address_to_str,
    is_valid_public_key,
    refuse_well_known_key,
    well_known_name,
)
from deltachain.crypto.keystore import plain_key, read_key_file, write_key_file
from deltachain.errors import InvalidCall, InvalidKey
from deltachain.node.cli import main
from deltachain.primitives.chainspec import dev_chain_spec
from deltachain.primitives.types import Address
from deltachain.runtime.executive import check_transaction
from node_process import CLI, START_S, free_port
from support import ALICE, MemChain

SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
]
NON_CANONICAL = "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"  # y = p


def test_only_large_order_points_are_valid_public_keys() -> None:
    assert is_valid_public_key(Keypair.generate().address)
    assert is_valid_public_key(Keypair.dev("bob").address)
    for point in [*SMALL_ORDER, NON_CANONICAL]:
        assert not is_valid_public_key(bytes.fromhex(point)), point
    assert not is_valid_public_key(b"\x01" * 31)


@pytest.mark.parametrize("point", [*SMALL_ORDER, NON_CANONICAL])
def test_register_client_refuses_keys_nobody_can_sign_for(point: str) -> None:
    chain = MemChain()
    tx = chain.tx(ALICE, "system", "register_client", {"client": bytes.fromhex(point)})
    with pytest.raises(InvalidCall, match="not an ed25519 key anyone can sign with"):
        check_transaction(chain.runtime, chain.state(), tx, chain.genesis_hash)


def test_register_client_still_takes_real_keys() -> None:
    chain = MemChain()
    fresh = Keypair.generate()
    chain.produce([chain.tx(ALICE, "system", "register_client", {"client": fresh.address})])
    assert (
        chain.runtime.modules["system"].query(chain.state(), "account", {"address": fresh.address})[
            "role"
        ]
        == "client"
    )


def test_well_known_keys_are_refused_on_live_chains(tmp_path: Path) -> None:
    alice = Keypair.dev("alice")
    assert well_known_name(alice.address) == "//alice"
    assert well_known_name(Keypair.generate().address) is None
    with pytest.raises(InvalidKey, match=r"validator key //alice is a well-known"):
        refuse_well_known_key(alice, "//alice", "Live", "validator")
    with pytest.raises(InvalidKey, match=r"//zed is a well-known"):
        refuse_well_known_key(Keypair.dev("zed"), "//zed", "Live", "admin")
    # a key file holding //alice's seed is the same public secret
    path = tmp_path / "alice.json"
    write_key_file(path, plain_key(alice))
    with pytest.raises(InvalidKey, match=r"//alice"):
        refuse_well_known_key(read_key_file(path, None), str(path), "Live", "admin")
    for chain_type in ("Development", "Local"):
        refuse_well_known_key(alice, "//alice", chain_type, "validator")
    refuse_well_known_key(Keypair.generate(), "key.json", "Live", "validator")


def test_node_refuses_a_dev_validator_key_on_a_live_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = dev_chain_spec().to_json()
    spec["chainType"] = "Live"
    path = tmp_path / "live.json"
    path.write_text(json.dumps(spec))
    argv = ["node", "--chain", str(path), "--validator", "--key", "//alice"]
    assert main([*argv, "--base-path", str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "//alice is a well-known development key" in err
    assert "'Live'" in err
    assert not (tmp_path / "db").exists()  # refused before anything was created


def test_key_and_password_files_readable_by_others_warn_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = Keypair.generate()
    path = tmp_path / "key.json"
    write_key_file(path, plain_key(key))
    with caplog.at_level(logging.WARNING, logger="deltachain.keystore"):
        read_key_file(path, None)
    assert caplog.records == []  # written 0600
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="deltachain.keystore"):
        assert read_key_file(path, None) == key  # still used, but not silently
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "readable by other users" in message
    assert "chmod 600" in message
    assert "\n" not in message
    caplog.clear()
    from deltachain.node.cli import read_password

    secret = tmp_path / "password.txt"
    secret.write_text("hunter2\n")
    secret.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="deltachain.keystore"):
        assert read_password(str(secret)) == "hunter2"
    assert [r.getMessage().split(" ")[:2] for r in caplog.records] == [["password", "file"]]


def test_address_type_is_32_bytes() -> None:
    assert len(Address(Keypair.generate().address)) == 32


@pytest.mark.slow
def test_dev_admin_and_signing_keys_are_refused_by_a_live_chain_s_clients(tmp_path: Path) -> None:
    """Against a running Live chain: `register-client --key //alice` and `client run
    --admin-key //alice` stop with one line before signing anything."""
    validator = Keypair.generate()
    key_file = tmp_path / "validator.json"
    write_key_file(key_file, plain_key(validator))
    spec = dev_chain_spec(slot_ms=250).to_json()
    spec["chainType"] = "Live"
    spec["genesis"]["consensus"]["authorities"] = [address_to_str(validator.address)]
    spec["genesis"]["runtime"]["system"]["admin"] = address_to_str(validator.address)
    spec_path = tmp_path / "live.json"
    spec_path.write_text(json.dumps(spec))
    port = free_port()
    log = tmp_path / "node.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *CLI,
                *("node", "--chain", str(spec_path), "--validator", "--key", str(key_file)),
                *("--base-path", str(tmp_path / "db"), "--rpc-port", str(port), "--no-prometheus"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while "JSON-RPC listening" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        stranger = address_to_str(Keypair.generate().address)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)

        signed = cli("register-client", stranger, "--key", "//alice", "--rpc", url)
        assert signed.returncode == 1
        assert signed.stderr.count("\n") == 1, signed.stderr
        assert "signing key //alice is a well-known development key" in signed.stderr
        fleet = cli(
            "client", "run", "--rpc", url, "--chain", str(spec_path), "--admin-key", "//alice"
        )
        assert fleet.returncode == 1
        assert fleet.stderr.count("\n") == 1, fleet.stderr
        assert "admin key //alice is a well-known development key" in fleet.stderr
        # the real admin key is accepted (registration goes through)
        done = cli("register-client", stranger, "--key", str(key_file), "--rpc", url)
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
