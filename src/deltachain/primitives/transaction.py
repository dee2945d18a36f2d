"""The signed transaction envelope: sender, nonce, call; signature over domain ‖ genesis ‖ body.

On the wire a transaction is ``[body_bytes, signature]`` where ``body_bytes`` is itself the
canonical CBOR of ``[sender, nonce, module, function, args]``. Keeping the body as bytes means the
signed bytes are exactly the bytes on the wire; nothing is re-encoded before verification.
The transaction id is SHA-256 of the body (not of the signature), so it cannot be malleated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from deltachain import codec
from deltachain.crypto.hashing import PREFIX_TRANSACTION, tagged_hash
from deltachain.crypto.keys import DOMAIN_TX, Keypair, PublicKey, signing_payload
from deltachain.errors import DecodeError
from deltachain.primitives.types import Address, Hash32, Nonce, Signature, as_address, as_uint64

MAX_TX_SIZE = 768 * 1024
"""Below the ~1 MiB gossip limit with room for the batch envelope."""

MAX_NAME_LEN = 64


@dataclass(frozen=True)
class Call:
    module: str
    function: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class TransactionBody:
    sender: Address
    nonce: Nonce
    call: Call

    def encode(self) -> bytes:
        return codec.encode(
            [self.sender, self.nonce, self.call.module, self.call.function, dict(self.call.args)]
        )

    @classmethod
    def decode(cls, data: bytes) -> TransactionBody:
        obj = codec.decode(data, max_size=MAX_TX_SIZE, what="transaction body")
        if not isinstance(obj, list) or len(obj) != 5:
            raise DecodeError("a transaction body is [sender, nonce, module, function, args]")
        sender, nonce, module, function, args = obj
        for name, what in ((module, "module"), (function, "function")):
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
                raise DecodeError(f"transaction {what} name must be 1..{MAX_NAME_LEN} characters")
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise DecodeError("transaction args must be a map with text keys")
        return cls(
            sender=as_address(sender, "sender"),
            nonce=Nonce(as_uint64(nonce, "nonce")),
            call=Call(module, function, MappingProxyType(args)),
        )


@dataclass(frozen=True)
class SignedTransaction:
    body: TransactionBody
    body_bytes: bytes
    signature: Signature

    @property
    def hash(self) -> Hash32:
        return tagged_hash(PREFIX_TRANSACTION, self.body_bytes)

    @property
    def sender(self) -> Address:
        return self.body.sender

    @property
    def nonce(self) -> Nonce:
        return self.body.nonce

    @property
    def call(self) -> Call:
        return self.body.call

    def encode(self) -> bytes:
        return codec.encode([self.body_bytes, self.signature])

    def verify_signature(self, genesis_hash: Hash32) -> None:
        """Raises BadSignature (also for a transaction signed for another chain)."""
        PublicKey.from_bytes(bytes(self.sender)).verify(
            signing_payload(DOMAIN_TX, genesis_hash, self.body_bytes), self.signature
        )

    @classmethod
    def decode(cls, data: bytes) -> SignedTransaction:
        obj = codec.decode(data, max_size=MAX_TX_SIZE, what="transaction")
        if not isinstance(obj, list) or len(obj) != 2:
            raise DecodeError("a transaction is [body, signature]")
        body_bytes, signature = obj
        if not isinstance(body_bytes, bytes) or not isinstance(signature, bytes):
            raise DecodeError("transaction body and signature must be bytes")
        if len(signature) != 64:
            raise DecodeError("a transaction signature is 64 bytes")
        return cls(TransactionBody.decode(body_bytes), body_bytes, Signature(signature))


def sign_transaction(
    keypair: Keypair,
    genesis_hash: Hash32,
    nonce: int,
    module: str,
    function: str,
    args: Mapping[str, Any],
) -> SignedTransaction:
    body = TransactionBody(keypair.address, Nonce(nonce), Call(module, function, args))
    body_bytes = body.encode()
    signature = keypair.sign(signing_payload(DOMAIN_TX, genesis_hash, body_bytes))
    return SignedTransaction(TransactionBody.decode(body_bytes), body_bytes, signature)
