"""Key files: encrypted (argon2id + XSalsa20-Poly1305 SecretBox) or plain dev keys.

Files are written atomically (temp file with mode 0600, fsync, then a hard link that fails if the
name is taken), so a crash never leaves a half-written key, other users can never read it, and an
existing key file is never replaced, not even by a writer racing us.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import InvalidKey, KeystoreError

log = logging.getLogger("deltachain.keystore")


def warn_if_exposed(path: Path, what: str) -> bool:
    """Log one warning line if ``path`` is readable by group or others; True if it is."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s %s is readable by other users (mode %o); run `chmod 600 %s`",
            what,
            path,
            stat.S_IMODE(mode),
            path,
        )
        return True
    return False


KEYSTORE_VERSION = 1
MAX_KEYFILE_SIZE = 64 * 1024
_KDF = nacl.pwhash.argon2id
# Interactive limits: about 0.1 s and 64 MiB per unlock on a laptop-class core.
_OPSLIMIT = _KDF.OPSLIMIT_INTERACTIVE
_MEMLIMIT = _KDF.MEMLIMIT_INTERACTIVE
# What a key file may ask of us when it is read: a corrupt or hostile file must not make an
# unlock take minutes or gigabytes (libsodium itself allows up to 2**32 - 1 passes and 4 TiB).
_OPSLIMIT_RANGE = (_KDF.OPSLIMIT_MIN, _KDF.OPSLIMIT_SENSITIVE)
_MEMLIMIT_RANGE = (_KDF.MEMLIMIT_MIN, _KDF.MEMLIMIT_SENSITIVE)


def _derive(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return bytes(
        _KDF.kdf(
            nacl.secret.SecretBox.KEY_SIZE,
            password.encode(),
            salt,
            opslimit=opslimit,
            memlimit=memlimit,
        )
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
        "kdf": {
            "name": "argon2id",
            "salt": salt.hex(),
            "opslimit": _OPSLIMIT,
            "memlimit": _MEMLIMIT,
        },
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
    """Atomically write a key file with mode 0600; refuses to overwrite an existing key.

    Raises KeystoreError if ``path`` already exists (checked atomically by the final link).
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
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
        # link(2), unlike rename(2), fails when the name exists: a key that appeared since the
        # check above is kept, not silently replaced.
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise KeystoreError(
                f"{path} already exists; refusing to overwrite a key file"
            ) from None
        except OSError:
            # A filesystem without hard links: fall back to check-then-rename.
            if path.exists() or path.is_symlink():
                raise KeystoreError(
                    f"{path} already exists; refusing to overwrite a key file"
                ) from None
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _kdf_limit(path: Path, kdf: dict[str, Any], name: str, bounds: tuple[int, int]) -> int:
    value = kdf[name]
    low, high = bounds
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise KeystoreError(f"{path}: kdf {name} must be an integer in [{low}, {high}]")
    return value


def read_key_file(path: Path, password: str | None) -> Keypair:
    """Load a key file.

    Raises KeystoreError with a one-line reason: missing, not a regular file, too large, not JSON,
    unknown version or kdf, kdf costs out of range, no password given, wrong password or
    corrupt ciphertext, malformed fields, or a stored address that does not match the key.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise KeystoreError(f"{path} is not a regular file")
        warn_if_exposed(path, "key file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_KEYFILE_SIZE + 1)
        if len(raw) > MAX_KEYFILE_SIZE:
            raise KeystoreError(f"{path} is too large to be a key file")
        content = json.loads(raw.decode())
    except FileNotFoundError:
        raise KeystoreError(f"key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"{path} is not a readable key file: {exc}") from None
    version = content.get("version") if isinstance(content, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version != KEYSTORE_VERSION:
        raise KeystoreError(f"{path}: unknown key file format")
    try:
        if "plain_seed" in content:
            keypair = Keypair(bytes.fromhex(content["plain_seed"]))
        else:
            kdf = content["kdf"]
            if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
                name = kdf.get("name") if isinstance(kdf, dict) else kdf
                raise KeystoreError(f"{path}: unsupported kdf {name!r}")
            if password is None:
                raise KeystoreError(
                    f"{path} is encrypted: give the password (--password-file or "
                    "DELTACHAIN_PASSWORD)"
                )
            opslimit = _kdf_limit(path, kdf, "opslimit", _OPSLIMIT_RANGE)
            memlimit = _kdf_limit(path, kdf, "memlimit", _MEMLIMIT_RANGE)
            key = _derive(password, bytes.fromhex(kdf["salt"]), opslimit, memlimit)
            try:
                seed = nacl.secret.SecretBox(key).decrypt(bytes.fromhex(content["ciphertext"]))
            except nacl.exceptions.CryptoError:
                raise KeystoreError(f"{path}: wrong password or corrupt key file") from None
            keypair = Keypair(seed)
    except (KeyError, TypeError, ValueError, InvalidKey, nacl.exceptions.CryptoError) as exc:
        raise KeystoreError(f"{path}: malformed key file ({exc})") from None
    if content.get("address") != address_to_str(keypair.address):
        raise KeystoreError(f"{path}: the stored address does not match the key")
    return keypair
