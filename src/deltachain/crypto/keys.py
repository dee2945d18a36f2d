"""ed25519 over pynacl as a tiny typed API whose ``verify`` raises.

Addresses are the raw 32-byte ed25519 public key, written as ``0x`` + 64 lowercase hex digits.
We chose hex over an SS58-style checksummed string: every tool (JSON-RPC, logs, sqlite) already
speaks hex, and a wrong-length or mistyped key fails the 32-byte check or signature verification.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import NewType

import nacl.bindings
import nacl.exceptions
import nacl.signing

from deltachain.crypto.hashing import Hash32
from deltachain.errors import BadSignature, InvalidKey

Address = NewType("Address", bytes)
Signature = NewType("Signature", bytes)

PUBLIC_KEY_LEN = 32
SEED_LEN = 32
SIGNATURE_LEN = 64

# Domain tags: what a signature is *for*. A vote can never be replayed as a seal or a transaction.
DOMAIN_TX = b"deltachain/tx/v1"
DOMAIN_SEAL = b"deltachain/seal/v1"
DOMAIN_VOTE = b"deltachain/vote/v1"


def signing_payload(domain: bytes, genesis_hash: Hash32, body: bytes) -> bytes:
    """domain tag ‖ genesis hash ‖ body: binds every signature to its purpose and its chain."""
    return bytes([len(domain)]) + domain + genesis_hash + body


def address_to_str(address: Address) -> str:
    return "0x" + address.hex()


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_address(text: str) -> Address:
    """Parse ``0x`` + 64 hex digits (the ``0x`` may be left out); raises InvalidKey with what was
    wrong. Nothing else is accepted (no spaces, no other types), so an address has one spelling
    up to the case of its digits."""
    if not isinstance(text, str):
        raise InvalidKey(f"an address is a string, not {type(text).__name__}")
    body = text[2:] if text.startswith(("0x", "0X")) else text
    if not set(body) <= _HEX_DIGITS:
        raise InvalidKey(f"address {text!r} is not hex; expected 0x followed by 64 hex digits")
    if len(body) != 2 * PUBLIC_KEY_LEN:
        raise InvalidKey(f"address {text!r} has {len(body)} hex digits; expected 64")
    return PublicKey.from_bytes(bytes.fromhex(body)).address


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_LEN:
            raise InvalidKey(f"an ed25519 public key is {PUBLIC_KEY_LEN} bytes")

    @classmethod
    def from_bytes(cls, raw: bytes) -> PublicKey:
        """Raises InvalidKey unless ``raw`` is 32 bytes."""
        key = cls(raw)
        try:
            nacl.signing.VerifyKey(raw)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise InvalidKey("not a valid ed25519 public key") from None
        return key

    @property
    def address(self) -> Address:
        return Address(self.raw)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise BadSignature unless ``signature`` is this key's signature over ``message``."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
            raise BadSignature(f"a signature is {SIGNATURE_LEN} bytes")
        try:
            nacl.signing.VerifyKey(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            raise BadSignature("signature does not verify") from None


def verify(address: Address, message: bytes, signature: bytes) -> None:
    """Verify a signature by the key whose address is given; raises InvalidKey or BadSignature.

    ``address`` must be 32 bytes; it is not coerced (``bytes(32)`` would be the all-zero key).
    """
    PublicKey.from_bytes(address).verify(message, signature)


class Keypair:
    """A signing key. Not a dataclass: the seed must never appear in a repr or a log line."""

    __slots__ = ("_signing", "public_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise InvalidKey(f"an ed25519 seed is {SEED_LEN} bytes")
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(bytes(self._signing.verify_key))

    @classmethod
    def generate(cls) -> Keypair:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def dev(cls, name: str) -> Keypair:
        """Well-known development keys (``//alice`` style): public, never use them on a real chain.

        The name is case-insensitive: ``dev("Alice") == dev("alice")``.
        """
        return cls(hashlib.sha256(b"deltachain/dev-key/" + name.lower().encode()).digest())

    @property
    def address(self) -> Address:
        return self.public_key.address

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    def sign(self, message: bytes) -> Signature:
        return Signature(self._signing.sign(message).signature)

    def __repr__(self) -> str:
        return f"Keypair({address_to_str(self.address)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keypair) and hmac.compare_digest(self.seed, other.seed)

    def __hash__(self) -> int:
        return hash(self.public_key.raw)


WELL_KNOWN_NAMES = ("alice", "bob", "charlie", "dave", "eve", "ferdie")
"""Substrate's well-known development accounts; ours derive from the name (``Keypair.dev``)."""
DEV_CHAIN_TYPES = ("Development", "Local")
"""Chain types on which well-known keys may sign (a spec's ``chainType``)."""


def well_known_name(address: Address) -> str | None:
    """``//name`` if ``address`` is a well-known development key (its secret is public)."""
    for name in WELL_KNOWN_NAMES:
        if Keypair.dev(name).address == address:
            return f"//{name}"
    return None


def refuse_well_known_key(key: Keypair, spec: str, chain_type: str, role: str) -> None:
    """Raise InvalidKey (one line) for a ``//name`` or well-known key on a chain that is not
    Development/Local: anyone can derive its secret and sign as the validator or admin."""
    if chain_type in DEV_CHAIN_TYPES:
        return
    name = spec if spec.startswith("//") else well_known_name(key.address)
    if name is not None:
        raise InvalidKey(
            f"{role} key {name} is a well-known development key (anyone can sign with it); "
            f"this chain is {chain_type!r}: use a key file from `deltachain key generate`"
        )


def is_valid_public_key(raw: bytes) -> bool:
    """A canonical ed25519 point of large prime order: a key some secret can sign for.

    Small-order points (the identity among them) and non-canonical encodings are refused, so
    no address can be registered that nobody — or everybody — can sign for.
    """
    return (
        isinstance(raw, bytes)
        and len(raw) == PUBLIC_KEY_LEN
        and bool(nacl.bindings.crypto_core_ed25519_is_valid_point(raw))
    )
