"""Key files: encrypted and plain round trips, permissions, no overwriting, and every way a key
file can be wrong ending in KeystoreError. Argon2id derivations are slow on purpose (about 0.1 s
and 64 MiB each), so one encrypted file is made per module and each test derives at most once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import nacl.pwhash
import pytest

from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.crypto.keystore import (
    KEYSTORE_VERSION,
    MAX_KEYFILE_SIZE,
    encrypt_key,
    plain_key,
    read_key_file,
    write_key_file,
)
from deltachain.errors import DeltachainError, KeystoreError

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery staple"
ALICE = Keypair.dev("alice")
BOB = Keypair.dev("bob")


@pytest.fixture(scope="module")
def encrypted() -> dict[str, Any]:
    """Alice's key encrypted once (one derivation) for the whole module; tests copy it."""
    return encrypt_key(ALICE, PASSWORD)


def write_json(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path


def modified(content: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(content))
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --- round trips ------------------------------------------------------------------------------


def test_encrypted_round_trip(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    path = tmp_path / "alice.json"
    write_key_file(path, encrypted)
    loaded = read_key_file(path, PASSWORD)
    assert loaded == ALICE
    assert loaded.seed == ALICE.seed
    assert loaded.address == ALICE.address


def test_encrypted_file_uses_interactive_argon2id(encrypted: dict[str, Any]) -> None:
    kdf = encrypted["kdf"]
    assert kdf["name"] == "argon2id"
    assert kdf["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
    assert kdf["memlimit"] == nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
    assert len(bytes.fromhex(kdf["salt"])) == nacl.pwhash.argon2id.SALTBYTES
    assert encrypted["version"] == KEYSTORE_VERSION
    assert encrypted["address"] == address_to_str(ALICE.address)


def test_encrypted_file_does_not_contain_the_seed(
    tmp_path: Path, encrypted: dict[str, Any]
) -> None:
    path = tmp_path / "alice.json"
    write_key_file(path, encrypted)
    raw = path.read_bytes()
    text = raw.decode().lower()
    assert ALICE.seed.hex() not in text
    assert ALICE.seed not in raw
    assert "plain_seed" not in text


def test_wrong_password(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    path = write_json(tmp_path / "alice.json", encrypted)
    with pytest.raises(KeystoreError, match="wrong password"):
        read_key_file(path, "Correct horse battery staple")


def test_encrypted_without_password(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    path = write_json(tmp_path / "alice.json", encrypted)
    with pytest.raises(KeystoreError, match="password"):
        read_key_file(path, None)


def test_empty_password_is_refused() -> None:
    with pytest.raises(KeystoreError):
        encrypt_key(ALICE, "")


def test_plain_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "bob.json"  # parent directories are created
    write_key_file(path, plain_key(BOB))
    assert read_key_file(path, None) == BOB
    assert read_key_file(path, "ignored for plain keys") == BOB
    assert json.loads(path.read_text())["plain_seed"] == BOB.seed.hex()


# --- file mode, atomic no-overwrite -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["encrypted", "plain"])
def test_file_mode_is_0600_whatever_the_umask(
    tmp_path: Path, encrypted: dict[str, Any], kind: str
) -> None:
    content = encrypted if kind == "encrypted" else plain_key(BOB)
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "key.json", content)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600


def test_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text("precious")
    with pytest.raises(KeystoreError, match="exists"):
        write_key_file(path, plain_key(BOB))
    assert path.read_text() == "precious"
    write_key_file(tmp_path / "other.json", plain_key(ALICE))
    with pytest.raises(KeystoreError):
        write_key_file(tmp_path / "other.json", plain_key(BOB))
    assert read_key_file(tmp_path / "other.json", None) == ALICE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json", "other.json"]


def test_dangling_symlink_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeystoreError):
        write_key_file(path, plain_key(BOB))
    assert path.is_symlink()


def test_file_created_during_the_write_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer creates the key after the existence check, while ours is being synced:
    theirs must survive (a rename would silently replace it)."""
    path = tmp_path / "key.json"
    real_fsync = os.fsync

    def racing_fsync(fd: int) -> None:
        if not path.exists():
            path.write_text("theirs")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", racing_fsync)
    with pytest.raises(KeystoreError, match="exists"):
        write_key_file(path, plain_key(BOB))
    assert path.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # no temp file left behind


def test_write_without_hard_links_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError("hard links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "key.json"
    write_key_file(path, plain_key(BOB))
    assert read_key_file(path, None) == BOB
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeystoreError):
        write_key_file(path, plain_key(ALICE))
    assert read_key_file(path, None) == BOB
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]


# --- corrupt files: everything is a KeystoreError ---------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"[]", b"null", b"42", b'"key"', b"\xff\xfe{}", b"{}"],
    ids=["empty", "truncated", "text", "list", "null", "number", "string", "not utf-8", "{}"],
)
def test_corrupt_json(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "key.json"
    path.write_bytes(raw)
    with pytest.raises(KeystoreError):
        read_key_file(path, PASSWORD)


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, True, None, [1]])
def test_unknown_version(tmp_path: Path, version: Any) -> None:
    content = plain_key(BOB)
    if version is None:
        del content["version"]
    else:
        content["version"] = version
    with pytest.raises(KeystoreError, match="format"):
        read_key_file(write_json(tmp_path / "key.json", content), None)


def test_truncated_ciphertext(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    ciphertext = encrypted["ciphertext"]
    path = write_json(tmp_path / "key.json", modified(encrypted, ciphertext=ciphertext[:-8]))
    with pytest.raises(KeystoreError):
        read_key_file(path, PASSWORD)


def test_ciphertext_shorter_than_a_nonce(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    path = write_json(tmp_path / "key.json", modified(encrypted, ciphertext="00" * 10))
    with pytest.raises(KeystoreError):
        read_key_file(path, PASSWORD)


def test_tampered_ciphertext(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    raw = bytearray.fromhex(encrypted["ciphertext"])
    raw[-1] ^= 1
    path = write_json(tmp_path / "key.json", modified(encrypted, ciphertext=raw.hex()))
    with pytest.raises(KeystoreError):
        read_key_file(path, PASSWORD)


@pytest.mark.parametrize("ciphertext", ["abc", "zz" * 72, 12, None, [1, 2]])
def test_malformed_ciphertext_field(
    tmp_path: Path, encrypted: dict[str, Any], ciphertext: Any
) -> None:
    content = modified(encrypted)
    if ciphertext is None:
        del content["ciphertext"]
    else:
        content["ciphertext"] = ciphertext
    # Keep the derivation out of the picture: a cheap kdf the reader accepts.
    content["kdf"].update(
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN, memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN
    )
    with pytest.raises(KeystoreError):
        read_key_file(write_json(tmp_path / "key.json", content), PASSWORD)


def test_tampered_address_encrypted(tmp_path: Path, encrypted: dict[str, Any]) -> None:
    path = write_json(
        tmp_path / "key.json", modified(encrypted, address=address_to_str(BOB.address))
    )
    with pytest.raises(KeystoreError, match="address"):
        read_key_file(path, PASSWORD)


@pytest.mark.parametrize("address", ["bob", "missing", "upper", "garbage"])
def test_tampered_address_plain(tmp_path: Path, address: str) -> None:
    content = plain_key(ALICE)
    if address == "bob":
        content["address"] = address_to_str(BOB.address)
    elif address == "missing":
        del content["address"]
    elif address == "upper":
        content["address"] = "0x" + ALICE.address.hex().upper()
    else:
        content["address"] = 7
    with pytest.raises(KeystoreError, match="address"):
        read_key_file(write_json(tmp_path / "key.json", content), None)


@pytest.mark.parametrize("seed", ["00" * 31, "00" * 33, "zz" * 32, 5, None])
def test_malformed_plain_seed(tmp_path: Path, seed: Any) -> None:
    content = plain_key(ALICE)
    content["plain_seed"] = seed
    with pytest.raises(KeystoreError):
        read_key_file(write_json(tmp_path / "key.json", content), None)


@pytest.mark.parametrize(
    "kdf",
    [
        "argon2id",  # not an object
        ["argon2id"],
        None,
        {"name": "scrypt"},
        {},
        {"name": "argon2id"},  # no salt or limits
        {"name": "argon2id", "salt": "00" * 16, "opslimit": 2, "memlimit": "64MiB"},
        {"name": "argon2id", "salt": "00" * 16, "opslimit": True, "memlimit": 8192},
        {"name": "argon2id", "salt": "00" * 16, "opslimit": 2.0, "memlimit": 8192},
        {"name": "argon2id", "salt": "00" * 16, "opslimit": 0, "memlimit": 8192},
        {"name": "argon2id", "salt": "00" * 16, "opslimit": 2, "memlimit": 0},
        {"name": "argon2id", "salt": "00" * 3, "opslimit": 2, "memlimit": 8192},
        {"name": "argon2id", "salt": "xyz", "opslimit": 2, "memlimit": 8192},
    ],
)
def test_malformed_kdf(tmp_path: Path, encrypted: dict[str, Any], kdf: Any) -> None:
    path = write_json(tmp_path / "key.json", modified(encrypted, kdf=kdf))
    with pytest.raises(KeystoreError):
        read_key_file(path, PASSWORD)


@pytest.mark.timeout(10, method="thread")
@pytest.mark.parametrize(
    ("opslimit", "memlimit"),
    [
        (2**32 - 1, nacl.pwhash.argon2id.MEMLIMIT_MIN),  # billions of passes: hours
        (1, nacl.pwhash.argon2id.MEMLIMIT_MAX),  # 4 TiB
        (1, 2 * nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE),
        (nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE + 1, nacl.pwhash.argon2id.MEMLIMIT_MIN),
    ],
    ids=["ops 2^32-1", "mem 4TiB", "mem 2GiB", "ops 5"],
)
def test_hostile_kdf_costs_are_refused_before_deriving(
    tmp_path: Path, encrypted: dict[str, Any], opslimit: int, memlimit: int
) -> None:
    kdf = dict(encrypted["kdf"], opslimit=opslimit, memlimit=memlimit)
    path = write_json(tmp_path / "key.json", modified(encrypted, kdf=kdf))
    with pytest.raises(KeystoreError, match="kdf"):
        read_key_file(path, PASSWORD)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="does not exist"):
        read_key_file(tmp_path / "absent.json", None)


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError):
        read_key_file(tmp_path, None)


@pytest.mark.timeout(10, method="thread")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeystoreError, match="regular file"):
        read_key_file(fifo, None)


def test_oversize_file(tmp_path: Path) -> None:
    content = plain_key(BOB)
    content["padding"] = "x" * MAX_KEYFILE_SIZE
    with pytest.raises(KeystoreError, match="too large"):
        read_key_file(write_json(tmp_path / "key.json", content), None)


def test_keystore_error_is_in_the_tree() -> None:
    assert issubclass(KeystoreError, DeltachainError)
