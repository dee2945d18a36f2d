"""Errors the light client raises, all from the one tree in ``deltachain.errors``.

``InvalidVote`` (a justification that does not verify: bad signatures, non-authorities,
duplicated voters, too little weight, wrong set id, forged headers, another chain),
``ProofError`` (a state, set or chunk proof that does not verify), ``DecodeError`` (malformed
bytes) and ``StaleData`` (valid, but not newer than what the client trusts).
"""

from __future__ import annotations

from deltachain.errors import StaleData

__all__ = ["StaleData"]
