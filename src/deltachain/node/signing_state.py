"""A validator's last signed vote, in a small file beside its key (not in the chain database).

CometBFT keeps ``priv_validator_state.json`` for the same reason: the chain database can be
wiped to resync, emptied by a bad disk or rolled back by a lost WAL, and a validator that took
its double-vote protection from there would then sign votes that conflict with ones it already
sent. This file is written atomically (temp file, fsync, rename, fsync of the directory) before
a vote leaves the node and checked before every vote, whatever the database says.

It also remembers the finalized height and the database id at the last vote, so a database that
went backwards (finalized #35 after the node saw #40: a deleted or truncated WAL) is refused at
start instead of being trusted.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deltachain.consensus.finality import Vote
from deltachain.crypto.keys import address_to_str
from deltachain.errors import DecodeError, StorageError
from deltachain.primitives.types import Address
from deltachain.primitives.vote import Link

log = logging.getLogger("deltachain.signing")

VERSION = 1


class SigningStateError(StorageError):
    """The signing-state file is unreadable, or belongs to another key."""


@dataclass(frozen=True)
class SignedRecord:
    """The last vote this validator signed and what its database said at that moment."""

    vote: Vote
    finalized: int
    database_id: bytes
    genesis_hash: bytes
    """Votes sign the genesis hash: a record of another chain never conflicts with this one."""

    def conflict(self, link: Link) -> str | None:
        """Why signing ``link`` could conflict with the recorded vote, or None if it is safe.

        Safe means a later authority set, or in the same set a higher target and a source not
        below the recorded one (no double vote, no surround vote). The identical link is not
        "safe" here: the caller re-sends the recorded vote instead of signing again.
        """
        last = self.vote.link
        if link.set_id != last.set_id:
            return None if link.set_id > last.set_id else "an earlier authority set"
        if link.target.number <= last.target.number:
            return (
                f"target #{link.target.number} is not above the signed target #{last.target.number}"
            )
        if link.source.number < last.source.number:
            return f"source #{link.source.number} is below the signed source #{last.source.number}"
        return None

    def to_json(self) -> dict[str, object]:
        link = self.vote.link
        return {
            "version": VERSION,
            "address": address_to_str(self.vote.voter),
            "set_id": link.set_id,
            "source": [link.source.number, link.source.hash.hex()],
            "target": [link.target.number, link.target.hash.hex()],
            "vote": self.vote.encode().hex(),
            "finalized": self.finalized,
            "database_id": self.database_id.hex(),
            "genesis": self.genesis_hash.hex(),
        }


class SigningState:
    """The signing-state file of one validator key."""

    def __init__(self, path: Path, voter: Address) -> None:
        self.path = Path(path)
        self.voter = voter
        self.record = self._read()
        self._refused: str | None = None

    def _read(self) -> SignedRecord | None:
        if not self.path.exists():
            return None
        fix = f"restore it from a backup or, only if this key never voted, remove {self.path}"
        try:
            obj = json.loads(self.path.read_text())
            vote = Vote.decode(bytes.fromhex(obj["vote"]))
            record = SignedRecord(
                vote,
                int(obj["finalized"]),
                bytes.fromhex(obj["database_id"]),
                bytes.fromhex(obj["genesis"]),
            )
        except (OSError, ValueError, KeyError, TypeError, DecodeError) as exc:
            raise SigningStateError(
                f"signing state {self.path} is unreadable ({exc}); {fix}"
            ) from None
        if vote.voter != self.voter:
            raise SigningStateError(
                f"signing state {self.path} belongs to {address_to_str(vote.voter)}, not this "
                f"key {address_to_str(self.voter)}; pass the matching --signing-state"
            )
        return record

    def for_chain(self, genesis_hash: bytes) -> None:
        """Set aside a record of another chain (a new genesis with the same key): its votes
        sign another genesis hash, so they cannot conflict with this chain's."""
        record = self.record
        if record is not None and record.genesis_hash != genesis_hash:
            log.warning(
                "signing state %s is for another chain (genesis 0x%s…); it is replaced at this "
                "chain's first vote",
                self.path,
                record.genesis_hash.hex()[:16],
            )
            self.record = None

    def check(self, link: Link) -> str | None:
        """None if ``link`` may be signed; else why not (logged once per refusal streak)."""
        if self.record is None:
            return None
        why = self.record.conflict(link)
        if why is not None and self._refused is None:
            last = self.record.vote.link
            log.warning(
                "not voting: %s (signing state %s has set %d, #%d → #%d); waiting for the chain "
                "to pass it",
                why,
                self.path,
                last.set_id,
                last.source.number,
                last.target.number,
            )
        elif why is None and self._refused is not None:
            log.info("voting again: target #%d is past the signing state", link.target.number)
        self._refused = why
        return why

    def save(self, record: SignedRecord) -> None:
        """Write atomically and durably; raises StorageError (the vote must then not be sent)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = json.dumps(record.to_json(), indent=1, sort_keys=True).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(
                f"cannot write the signing state {self.path} ({exc.strerror or exc}); "
                "check free disk space and permissions"
            ) from None
        self.record = record

    def check_database(self, database_id: bytes, finalized: int, db_path: Path) -> None:
        """Refuse a database that lost finality this validator saw; note a resynced one.

        Raises StorageError (one line) when the same database now has a lower finalized block.
        """
        record = self.record
        if record is None:
            return
        if record.database_id == database_id:
            if finalized < record.finalized:
                raise StorageError(
                    f"{db_path} went back from finalized #{record.finalized} (when this "
                    f"validator last voted, per {self.path}) to #{finalized}: it lost writes "
                    "(a deleted or truncated -wal file?); move it and its -wal/-shm files aside "
                    "and start again to resync, keeping the signing-state file"
                )
            return
        last = record.vote.link
        log.warning(
            "the chain database is new to signing state %s (last vote: set %d, #%d → #%d); "
            "resyncing, and signing nothing that conflicts with that vote",
            self.path,
            last.set_id,
            last.source.number,
            last.target.number,
        )


def default_path(key_spec: str, base_path: Path) -> Path:
    """Beside the key file (``validator-0.json`` → ``validator-0.signing-state.json``); for a
    //dev key, which has no file, in the base path."""
    if key_spec.startswith("//"):
        return Path(base_path) / f"signing-state-{key_spec[2:]}.json"
    key = Path(key_spec)
    return key.with_name(f"{key.stem}.signing-state.json")


__all__ = ["SignedRecord", "SigningState", "SigningStateError", "default_path"]
