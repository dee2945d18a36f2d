"""The one tree of "expected invalid" exceptions.

Everything a peer, a client or a user can cause raises a subclass of :class:`DeltachainError`
with a one-line message that says what is wrong and, where it helps, what to do. Internal bugs
are *not* in this tree: they surface as ordinary Python exceptions so they never look like a
bad block or a bad transaction.
"""

from __future__ import annotations


class DeltachainError(Exception):
    """Root of every error caused by input from outside the process."""


# --- encoding -------------------------------------------------------------------------------


class DecodeError(DeltachainError):
    """Bytes that are not a valid canonical encoding of the expected object."""


class OversizeError(DecodeError):
    """An encoded object larger than the limit for its kind."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.what = what
        self.size = size
        self.limit = limit


class NonCanonicalError(DecodeError):
    """Valid CBOR whose canonical re-encoding differs (so two encodings could share an id)."""


# --- crypto ---------------------------------------------------------------------------------


class CryptoError(DeltachainError):
    """Key or signature material that is malformed or does not verify."""


class InvalidKey(CryptoError):
    """Key bytes of the wrong length or form."""


class BadSignature(CryptoError):
    """A signature that does not verify under the claimed key and message."""


class KeystoreError(DeltachainError):
    """A key file that cannot be read: wrong password, corrupt file, or wrong format."""


# --- chain spec -----------------------------------------------------------------------------


class ChainSpecError(DeltachainError):
    """A chain spec (genesis.json) that is malformed or inconsistent."""


# --- transactions ---------------------------------------------------------------------------


class InvalidTransaction(DeltachainError):
    """A transaction that must not be included in a block."""


class WrongChain(InvalidTransaction):
    """Signed for another chain (its genesis hash differs)."""


class UnknownCall(InvalidTransaction):
    """A call to a module or function this runtime does not have."""


class InvalidCall(InvalidTransaction):
    """Call arguments of the wrong shape, type or range."""


class Unauthorized(InvalidTransaction):
    """The sender may not make this call (e.g. not the admin, not a registered client)."""


class NonceError(InvalidTransaction):
    """The transaction nonce does not match the sender's account nonce."""

    def __init__(self, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(self._describe())

    def _describe(self) -> str:
        return f"nonce {self.got} does not match the account nonce {self.expected}"


class StaleNonce(NonceError):
    """The nonce was already used: the transaction is a replay or was already included."""

    def _describe(self) -> str:
        return f"nonce {self.got} is stale (account nonce is {self.expected}); already included?"


class FutureNonce(NonceError):
    """The nonce is ahead of the account: earlier transactions are still missing."""

    def _describe(self) -> str:
        return (
            f"nonce {self.got} is ahead of the account nonce {self.expected}; "
            "submit the missing earlier transactions first"
        )


# --- blocks and consensus -------------------------------------------------------------------


class InvalidBlock(DeltachainError):
    """A block that must not be imported."""


class InvalidSeal(InvalidBlock):
    """A header whose author or seal is wrong for its slot."""


# --- proofs ---------------------------------------------------------------------------------


class ProofError(DeltachainError):
    """A Merkle proof that does not verify against the given root."""


class StaleData(DeltachainError):
    """Data that is valid but not newer than what the client already trusts: a justification
    for a block at or below the finalized one, or a proof made against another state root than
    the one being verified against (fetch it again at the finalized block)."""


# --- transaction pool -----------------------------------------------------------------------


class PoolRejected(DeltachainError):
    """The transaction pool refused a transaction (it may still be valid later)."""


class AlreadyKnown(PoolRejected):
    """The same transaction is already in the pool."""


class Banned(PoolRejected):
    """A transaction found invalid recently; the pool refuses its hash for a while."""


class PoolFull(PoolRejected):
    """The pool is at its count or byte limit; retry later."""


# --- storage --------------------------------------------------------------------------------


class StorageError(DeltachainError):
    """The node's database cannot be used."""


class CorruptDatabase(StorageError):
    """The database exists but is damaged or is not a deltachain database."""


class ForeignDatabase(StorageError):
    """The database belongs to another chain (different genesis hash)."""


# --- network --------------------------------------------------------------------------------


class NetworkError(DeltachainError):
    """A peer could not be reached or answered badly; callers may retry or ask another peer."""


class ForeignChain(NetworkError):
    """A node serves another chain than the one the user trusts (its genesis hash differs)."""


class RequestTooLarge(NetworkError):
    """A request or response frame over its protocol's size cap."""


class UnsupportedProtocol(NetworkError):
    """The peer refused the protocol: it serves another chain (protocol ids are genesis-scoped)
    or does not serve that protocol at all."""


class NotFound(DeltachainError):
    """A block, transaction or state entry that the node does not have."""
