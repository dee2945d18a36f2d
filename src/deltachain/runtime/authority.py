"""Authority governance and equivocation evidence: a built-in runtime module (``authority``).

Set changes: an authority proposes the set that results from adding and removing addresses;
authorities approve; once a strict majority of the *current* set approves, the change is enacted
at the end of that block (the next block's author is chosen from the new set) and the set id
increases. Finality switches to the new set when the enacting block is finalized, so light
clients follow changes through justifications plus a state proof of ``system/authorities``.

Evidence: any authority may report two signed messages by one authority that break a rule: two
seals for one slot, or two finality votes that double-vote or surround. The runtime checks the
signatures itself and records the offence once.

State layout:
  ``authority/proposal/<id>``   → {"authorities": [...], "approvals": [...], "setId": n}
  ``authority/enact``           → the approved set, enacted in this block's on_finalize
  ``authority/evidence/<id>``   → {"kind", "offender", "at": block, "detail"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deltachain import codec
from deltachain.crypto.hashing import sha256
from deltachain.crypto.keys import PublicKey, address_to_str
from deltachain.errors import (
    CryptoError,
    DecodeError,
    InvalidCall,
    Unauthorized,
    UnknownCall,
)
from deltachain.primitives.block import Header, seal_payload
from deltachain.primitives.types import Address, Hash32, as_address
from deltachain.primitives.vote import InvalidVote, Vote, conflicting
from deltachain.runtime import system
from deltachain.runtime.module import BlockEnv, Event, Module
from deltachain.runtime.state import State

PREFIX_PROPOSAL = b"authority/proposal/"
KEY_ENACT = b"authority/enact"
PREFIX_EVIDENCE = b"authority/evidence/"
MAX_AUTHORITIES = 256
MAX_EVIDENCE_ITEM = 1024


@dataclass(frozen=True)
class ProposeChange:
    add: tuple[Address, ...]
    remove: tuple[Address, ...]


@dataclass(frozen=True)
class ApproveChange:
    proposal: Hash32


@dataclass(frozen=True)
class ReportEquivocation:
    kind: str  # "seal" or "vote"
    first: bytes
    second: bytes


def _addresses(value: Any, what: str) -> tuple[Address, ...]:
    if not isinstance(value, list) or len(value) > MAX_AUTHORITIES:
        raise InvalidCall(f"authority.{what} must be a list of at most {MAX_AUTHORITIES} addresses")
    try:
        return tuple(as_address(v, what) for v in value)
    except DecodeError as exc:
        raise InvalidCall(f"authority.{what}: {exc}") from None


def proposed_set(current: tuple[Address, ...], call: ProposeChange) -> list[Address]:
    """Current order minus removals, then additions in the order given."""
    return [a for a in current if a not in call.remove] + [a for a in call.add if a not in current]


def proposal_id(authorities: list[Address], set_id: int) -> Hash32:
    return sha256(codec.encode([set_id, list(authorities)]))


def evidence_id(report: ReportEquivocation) -> Hash32:
    """The same pair reported in either order is one offence."""
    return sha256(b"".join(sorted([report.first, report.second])))


def check_evidence(report: ReportEquivocation, genesis_hash: Hash32) -> tuple[Address, Any]:
    """Return (offender, detail) if the two messages prove an equivocation; raise InvalidCall."""
    if report.first == report.second:
        raise InvalidCall("evidence needs two different messages")
    try:
        if report.kind == "seal":
            a, b = Header.decode(report.first), Header.decode(report.second)
            if a.slot != b.slot or a.author != b.author:
                raise InvalidCall("seal evidence needs two headers for one slot by one author")
            for header in (a, b):
                PublicKey.from_bytes(bytes(header.author)).verify(
                    seal_payload(header, genesis_hash), header.seal
                )
            return a.author, {"slot": a.slot}
        if report.kind == "vote":
            va, vb = Vote.decode(report.first), Vote.decode(report.second)
            if va.voter != vb.voter:
                raise InvalidCall("vote evidence needs two votes by one voter")
            why = conflicting(va.link, vb.link)
            if why is None:
                raise InvalidCall("these two votes do not conflict")
            va.verify(genesis_hash)
            vb.verify(genesis_hash)
            return va.voter, {
                "rule": why,
                "setId": va.link.set_id,
                "targets": [va.link.target.number, vb.link.target.number],
            }
    except (DecodeError, CryptoError, InvalidVote) as exc:
        raise InvalidCall(f"evidence does not verify: {exc}") from None
    raise InvalidCall("evidence kind must be seal or vote")


class AuthorityModule(Module):
    name = "authority"

    def decode_call(self, function: str, args: Mapping[str, Any]) -> object:
        if function == "propose_change":
            if set(args) != {"add", "remove"}:
                raise InvalidCall("authority.propose_change takes add and remove (address lists)")
            return ProposeChange(
                _addresses(args["add"], "add"), _addresses(args["remove"], "remove")
            )
        if function == "approve_change":
            proposal = args.get("proposal")
            if set(args) != {"proposal"} or not isinstance(proposal, bytes) or len(proposal) != 32:
                raise InvalidCall("authority.approve_change takes proposal: a 32-byte id")
            return ApproveChange(Hash32(proposal))
        if function == "report_equivocation":
            kind, first, second = args.get("kind"), args.get("first"), args.get("second")
            if (
                set(args) != {"kind", "first", "second"}
                or not isinstance(kind, str)
                or not isinstance(first, bytes)
                or not isinstance(second, bytes)
                or max(len(first), len(second)) > MAX_EVIDENCE_ITEM
            ):
                raise InvalidCall("authority.report_equivocation takes kind, first, second")
            return ReportEquivocation(kind, first, second)
        raise UnknownCall(f"module 'authority' has no function {function!r}")

    def validate_call(self, state: State, sender: Address, call: object) -> None:
        authorities = system.get_authorities(state)
        if sender not in authorities:
            raise Unauthorized("only current authorities may change the set or report evidence")
        if isinstance(call, ProposeChange):
            new = proposed_set(authorities, call)
            if not new:
                raise InvalidCall("the proposed authority set is empty")
            if new == list(authorities):
                raise InvalidCall("the proposal does not change the authority set")
            if len(new) > MAX_AUTHORITIES:
                raise InvalidCall(f"at most {MAX_AUTHORITIES} authorities")
        elif isinstance(call, ApproveChange):
            raw = state.get(PREFIX_PROPOSAL + call.proposal)
            if raw is None:
                raise InvalidCall("no such authority-set proposal (it may have been enacted)")
            if sender in codec.decode(raw)["approvals"]:
                raise InvalidCall("this authority already approved the proposal")
        elif (
            isinstance(call, ReportEquivocation)
            and state.get(PREFIX_EVIDENCE + evidence_id(call)) is not None
        ):  # signatures need the genesis hash, so apply_call checks them
            raise InvalidCall("this equivocation is already recorded")

    def priority(self, call: object) -> int:
        return 2  # authority-set changes and equivocation evidence keep consensus honest

    def apply_call(
        self, state: State, sender: Address, call: object, env: BlockEnv, tx_hash: Hash32
    ) -> list[Event]:
        authorities = system.get_authorities(state)
        if isinstance(call, ProposeChange):
            new = proposed_set(authorities, call)
            pid = proposal_id(new, system.get_set_id(state))
            raw = state.get(PREFIX_PROPOSAL + pid)
            record: dict[str, Any] = (
                codec.decode(raw)
                if raw
                else {"authorities": new, "approvals": [], "setId": system.get_set_id(state)}
            )
            if sender not in record["approvals"]:
                record["approvals"].append(sender)
            return self._record(state, pid, record, authorities)
        if isinstance(call, ApproveChange):
            record = codec.decode(state.get(PREFIX_PROPOSAL + call.proposal) or b"")
            record["approvals"].append(sender)
            return self._record(state, call.proposal, record, authorities)
        if isinstance(call, ReportEquivocation):
            offender, detail = check_evidence(call, env.genesis_hash)
            state.set(
                PREFIX_EVIDENCE + evidence_id(call),
                codec.encode(
                    {
                        "kind": call.kind,
                        "offender": offender,
                        "at": env.number,
                        "detail": detail,
                        "reporter": sender,
                    }
                ),
            )
            return [Event(self.name, "Equivocation", {"kind": call.kind, "offender": offender})]
        raise UnknownCall(f"authority cannot apply {type(call).__name__}")

    def _record(
        self, state: State, pid: Hash32, record: dict[str, Any], authorities: tuple[Address, ...]
    ) -> list[Event]:
        state.set(PREFIX_PROPOSAL + pid, codec.encode(record))
        events = [
            Event(
                self.name,
                "ChangeApproved",
                {"proposal": pid, "approvals": len(record["approvals"])},
            )
        ]
        if 2 * len(record["approvals"]) > len(authorities):
            state.set(KEY_ENACT, codec.encode(record["authorities"]))
        return events

    def on_finalize(self, state: State, env: BlockEnv) -> list[Event]:
        raw = state.get(KEY_ENACT)
        if raw is None:
            return []
        new = [Address(a) for a in codec.decode(raw)]
        system.set_authorities(state, new)
        state.delete(KEY_ENACT)
        for key, _ in state.iter_prefix(PREFIX_PROPOSAL):
            state.delete(key)  # proposals were against the old set
        return [
            Event(
                self.name,
                "AuthoritiesChanged",
                {"setId": system.get_set_id(state), "authorities": [bytes(a) for a in new]},
            )
        ]

    def query(self, state: State, name: str, args: Mapping[str, Any]) -> Any:
        if name == "proposals":
            return [
                {"id": "0x" + key[len(PREFIX_PROPOSAL) :].hex(), **_readable(codec.decode(v))}
                for key, v in state.iter_prefix(PREFIX_PROPOSAL)
            ]
        if name == "evidence":
            return [_readable(codec.decode(v)) for _, v in state.iter_prefix(PREFIX_EVIDENCE)]
        if name == "set":
            return {
                "setId": system.get_set_id(state),
                "authorities": [address_to_str(a) for a in system.get_authorities(state)],
            }
        return super().query(state, name, args)


def _readable(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in ("authorities", "approvals"):
        if key in out:
            out[key] = [address_to_str(a) for a in out[key]]
    for key in ("offender", "reporter"):
        if key in out:
            out[key] = address_to_str(out[key])
    return out
