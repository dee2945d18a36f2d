"""Key files: encrypted (argon2id + XSalsa20-Poly1305 SecretBox) or plain dev keys.

Files are written atomically (temp file, fsync, rename) with mode 0600, so a crash never leaves a
half-written key and other users can never read it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import InvalidKey, KeystoreError

KEYSTORE_VERSION = 1
MAX_KEYFILE_SIZE = 64 * 1024
_KDF = nacl.pwhash.argon2id
# Interactive limits: about 0.1 s and 64 MiB per unlock on a laptop-class core.
_OPSLIMIT = _KDF.OPSLIMIT_INTERACTIVE
_MEMLIMIT = _KDF.MEMLIMIT_INTERACTIVE


def _derive(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return bytes(
        _KDF.kdf(nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt, opslimit=opslimit,
                 memlimit=memlimit)
    )


def encrypt_key(keypair: Keypair, password: str) -> dict[str, Any]:
    if not password:
        raise KeystoreError("an empty password is not allowed; use --plain for a dev key")
    salt = nacl.utils.random(_KDF.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(password, salt, _OPSLIMIT, _MEMLIMIT))
    return {
        "version": KEYSTORE_VERSION,
        "type": "ed25519",
        "address": address_to_str(keypair.address),
        "kdf": {"name": "argon2id", "salt": salt.hex(), "opslimit": _OPSLIMIT, "memlimit": _MEMLIMIT},
        "ciphertext": bytes(box.encrypt(keypair.seed)).hex(),
    }


def plain_key(keypair: Keypair) -> dict[str, Any]:
    return {
        "version": KEYSTORE_VERSION,
        "type": "ed25519",
        "address": address_to_str(keypair.address),
        "plain_seed": keypair.seed.hex(),
    }


def write_key_file(path: Path, content: dict[str, Any]) -> None:
    """Atomically write a key file with mode 0600; refuses to overwrite an existing key."""
    path = Path(path)
    if path.exists():
        raise KeystoreError(f"{path} already exists; refusing to overwrite a key file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(content, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_key_file(path: Path, password: str | None) -> Keypair:
    """Load a key file; raises KeystoreError with a one-line reason (wrong password, corrupt, ...)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_KEYFILE_SIZE:
            raise KeystoreError(f"{path} is too large to be a key file")
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"{path} is not a readable key file: {exc}") from None
    if not isinstance(content, dict) or content.get("version") != KEYSTORE_VERSION:
        raise KeystoreError(f"{path}: unknown key file format")
    try:
        if "plain_seed" in content:
            keypair = Keypair(bytes.fromhex(content["plain_seed"]))
        else:
            kdf = content["kdf"]
            if kdf.get("name") != "argon2id":
                raise KeystoreError(f"{path}: unsupported kdf {kdf.get('name')!r}")
            if password is None:
                raise KeystoreError(f"{path} is encrypted: give the password (--password-file or "
                                    "DELTACHAIN_PASSWORD)")
            key = _derive(password, bytes.fromhex(kdf["salt"]), int(kdf["opslimit"]),
                          int(kdf["memlimit"]))
            try:
                seed = nacl.secret.SecretBox(key).decrypt(bytes.fromhex(content["ciphertext"]))
            except nacl.exceptions.CryptoError:
                raise KeystoreError(f"{path}: wrong password or corrupt key file") from None
            keypair = Keypair(seed)
    except (KeyError, TypeError, ValueError, InvalidKey) as exc:
        raise KeystoreError(f"{path}: malformed key file ({exc})") from None
    if content.get("address") != address_to_str(keypair.address):
        raise KeystoreError(f"{path}: the stored address does not match the key")
    return keypair
