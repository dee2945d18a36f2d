"""SQLite storage through the node's Chain: create, reopen, refuse foreign/corrupt files, prune."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltachain.chain import construct_runtime
from deltachain.crypto.keys import Keypair
from deltachain.crypto.trie import trie_items
from deltachain.errors import (
    CorruptDatabase,
    ForeignDatabase,
    InvalidBlock,
    NotFound,
    StorageError,
)
from deltachain.node import chain as chain_mod
from deltachain.node import storage as storage_mod
from deltachain.node.chain import Chain
from deltachain.node.storage import DB_FILE, Storage
from deltachain.primitives.block import Block
from deltachain.primitives.chainspec import ChainSpec, dev_chain_spec
from deltachain.primitives.transaction import sign_transaction
from deltachain.primitives.types import Hash32, Slot
from deltachain.runtime import system
from deltachain.runtime.state import State

ALICE = Keypair.dev("alice")
SPEC = dev_chain_spec(slot_ms=100)


def open_chain(base: Path, spec: ChainSpec = SPEC, *, archive: bool = False) -> Chain:
    return Chain(spec, construct_runtime(), base, archive=archive)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = open_chain(tmp_path / "node")
    try:
        yield c
    finally:
        c.close()


def author(chain: Chain, count: int, *, remarks: bool = False) -> list[Block]:
    """Author ``count`` blocks in the slots after the head; with remarks each holds one tx."""
    blocks = []
    for _ in range(count):
        head = chain.storage.best_header()
        if remarks:
            nonce = system.get_nonce(chain.best_state(), ALICE.address)
            tx = sign_transaction(
                ALICE,
                chain.genesis_hash,
                nonce,
                "system",
                "remark",
                {"data": f"remark {nonce}".encode()},
            )
            chain.submit_transaction(tx.encode())
        result = chain.author_block(Slot(head.slot + 1), ALICE)
        assert result is not None
        assert len(result.block.transactions) == (1 if remarks else 0)
        blocks.append(result.block)
    return blocks


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dir_snapshot(base: Path) -> dict[str, str]:
    return {p.name: file_digest(p) for p in sorted(base.iterdir())}


# --- create, author, import, reopen ----------------------------------------------------------


def test_author_then_reopen_gives_same_head(tmp_path: Path) -> None:
    base = tmp_path / "node"
    c = open_chain(base)
    genesis = c.genesis_hash
    assert c.storage.best_hash() == genesis
    blocks = author(c, 5)
    best = c.storage.best_header()
    assert best.number == 5
    assert best.hash == blocks[-1].hash
    # A lone authority's votes finalize each block when its child is voted for (FFG: a
    # justified block is final once a link reaches its direct child).
    assert c.storage.finalized_hash() == blocks[-2].hash
    assert c.storage.justification(blocks[-2].hash)
    c.close()

    again = open_chain(base)
    try:
        assert again.genesis_hash == genesis
        assert again.storage.best_hash() == best.hash
        assert again.storage.finalized_hash() == blocks[-2].hash
        canon = list(again.storage.canonical_hashes())
        assert [n for n, _ in canon] == list(range(6))
        for (_, parent), (_, child) in itertools.pairwise(canon):
            assert again.storage.header(child).parent_hash == parent
        assert again.storage.block(best.hash) == blocks[-1]
        author(again, 2)  # keeps going from the reopened head
        assert again.storage.best_header().number == 7
    finally:
        again.close()


def test_import_blocks_authored_elsewhere(tmp_path: Path, chain: Chain) -> None:
    blocks = author(chain, 3, remarks=True)
    follower = open_chain(tmp_path / "follower")
    try:
        for block in blocks:
            result = follower.import_block(block, now_slot=None)
            assert result is not None
            assert result.output.diff.root == block.header.state_root
        assert follower.storage.best_hash() == chain.storage.best_hash()
        tx = blocks[1].transactions[0]
        assert follower.transaction_status(tx.hash)["block"] == 2
        assert follower.import_block(blocks[-1], now_slot=None) is None  # already imported
    finally:
        follower.close()


def test_bad_block_is_not_stored(tmp_path: Path, chain: Chain) -> None:
    (block,) = author(chain, 1, remarks=True)
    follower = open_chain(tmp_path / "follower")
    try:
        bad = Block(
            dataclasses.replace(block.header, state_root=Hash32(bytes(32))), block.transactions
        )
        with pytest.raises(InvalidBlock):
            follower.import_block(bad, now_slot=None)
        assert follower.storage.best_hash() == follower.genesis_hash
        assert not follower.storage.has_block(bad.hash)
        follower.import_block(block, now_slot=None)
        assert follower.storage.best_hash() == block.hash
    finally:
        follower.close()


def test_open_without_create_needs_a_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no chain database"):
        Storage.open_existing(tmp_path / "nothing")
    c = open_chain(tmp_path / "node")
    try:
        genesis = c.storage.block(c.genesis_hash)
        with pytest.raises(StorageError, match="no chain database"):
            Storage.open(
                tmp_path / "other", genesis, State(c.storage).commit_root(), SPEC.id, create=False
            )
        assert not (tmp_path / "other").exists()
    finally:
        c.close()


def test_second_writer_is_refused_but_readers_are_not(tmp_path: Path, chain: Chain) -> None:
    base = Path(chain.storage.path).parent
    author(chain, 2)
    with pytest.raises(StorageError, match=r"in use by another node \(pid \d+\)"):
        open_chain(base)
    reader = Storage.open_existing(base)  # `deltachain query --base-path` beside a live node
    try:
        assert reader.best_hash() == chain.storage.best_hash()
    finally:
        reader.close()
    author(chain, 1)  # the refused opener left the live node's database alone
    chain.close()
    reopened = open_chain(base)  # the lock went with the close
    try:
        assert reopened.storage.best_header().number == 3
    finally:
        reopened.close()


# --- foreign and corrupt databases -----------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(dataclasses.replace(SPEC, id="some_other_chain"), id="other-id"),
        pytest.param(dev_chain_spec(slot_ms=200), id="other-slot-ms"),
        pytest.param(
            dataclasses.replace(SPEC, authorities=(Keypair.dev("bob").address,)),
            id="other-authorities",
        ),
    ],
)
def test_foreign_database_is_refused(tmp_path: Path, other: ChainSpec) -> None:
    base = tmp_path / "node"
    c = open_chain(base)
    author(c, 2)
    c.close()
    before = dir_snapshot(base)
    with pytest.raises(ForeignDatabase) as info:
        open_chain(base, other)
    message = str(info.value)
    assert "deltachain_dev" in message
    assert "--base-path" in message
    assert "--chain" in message
    assert dir_snapshot(base) == before
    reopened = open_chain(base)  # still fine for its own chain
    try:
        assert reopened.storage.best_header().number == 2
    finally:
        reopened.close()


def _random_bytes(db: Path) -> None:
    db.write_bytes(os.urandom(8192))


def _unrelated_sqlite(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO photos(name) VALUES ('cat.jpg')")
    conn.close()


def _deltachain_db_edited(sql: str):  # type: ignore[no-untyped-def]
    def make(db: Path) -> None:
        open_chain(db.parent).close()
        conn = sqlite3.connect(db)
        conn.execute(sql)
        conn.commit()
        conn.close()

    return make


CORRUPTIONS = [
    pytest.param(_random_bytes, id="random-bytes"),
    pytest.param(_unrelated_sqlite, id="unrelated-sqlite"),
    pytest.param(
        _deltachain_db_edited("DELETE FROM meta WHERE key='genesis_hash'"),
        id="meta-genesis-deleted",
    ),
    pytest.param(
        _deltachain_db_edited("DELETE FROM meta WHERE key='best'"), id="meta-best-deleted"
    ),
    pytest.param(_deltachain_db_edited("DELETE FROM meta"), id="meta-emptied"),
    pytest.param(_deltachain_db_edited("DROP TABLE blocks"), id="blocks-table-dropped"),
    pytest.param(_deltachain_db_edited("DELETE FROM nodes"), id="state-deleted"),
    pytest.param(
        _deltachain_db_edited("UPDATE meta SET value=x'ff' WHERE key='schema_version'"),
        id="bad-schema-version",
    ),
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_corrupt_database_is_refused_and_left_alone(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "node"
    base.mkdir()
    db = base / DB_FILE
    corrupt(db)
    before = dir_snapshot(base)
    with pytest.raises(CorruptDatabase) as info:
        open_chain(base)
    assert "--base-path" in str(info.value)
    assert "\n" not in str(info.value)
    assert dir_snapshot(base) == before  # nothing initialised over it, no lock file left behind
    with pytest.raises(CorruptDatabase):
        Storage.open_existing(base)  # the read-only opener (`query --base-path`) agrees
    assert dir_snapshot(base) == before


def _header_only_sqlite(db: Path) -> None:
    """A valid SQLite file with no tables: what a wiped-and-recreated database looks like."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=1")
    conn.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda db: db.write_bytes(b""), id="zero-length"),
        pytest.param(_header_only_sqlite, id="no-tables"),
    ],
)
def test_empty_database_is_corruption_not_a_new_chain(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    """``: > chain.sqlite`` must not silently start a new chain: a validator would then vote
    again for heights its lost database had voted for. Only a missing file starts afresh."""
    base = tmp_path / "node"
    base.mkdir()
    make(base / DB_FILE)
    before = dir_snapshot(base)
    with pytest.raises(CorruptDatabase) as info:
        open_chain(base)
    message = str(info.value)
    assert "\n" not in message
    assert "aside" in message
    assert "signing-state" in message
    assert dir_snapshot(base) == before


def test_new_database_appears_whole(tmp_path: Path) -> None:
    """A new database is built under a temporary name and renamed in, so a crash while it is
    created leaves either no file or a whole one (never the empty file refused above)."""
    base = tmp_path / "node"
    c = open_chain(base)
    try:
        assert c.storage.best_hash() == c.genesis_hash
        first_id = c.storage.database_id()
    finally:
        c.close()
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []
    again = open_chain(base)
    try:
        assert again.storage.database_id() == first_id  # a resync would get a new id
    finally:
        again.close()


def test_check_db_finds_broken_invariants(tmp_path: Path) -> None:
    base = tmp_path / "node"
    c = open_chain(base)
    try:
        author(c, 4)
    finally:
        c.close()
    assert storage_mod.check_database(base) == []
    conn = sqlite3.connect(base / DB_FILE)
    conn.execute("DELETE FROM canon WHERE number=2")
    conn.execute(
        "UPDATE meta SET value=(SELECT hash FROM canon WHERE number=4) WHERE key='finalized'"
    )
    conn.execute("UPDATE meta SET value=(SELECT hash FROM canon WHERE number=3) WHERE key='best'")
    conn.commit()
    conn.close()
    problems = storage_mod.check_database(base)
    assert any("jump from #1 to #3" in p for p in problems), problems
    assert any("finalized #4 is above best #3" in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    (base / DB_FILE).write_bytes(b"")
    assert len(storage_mod.check_database(base)) == 1


# --- pruning ---------------------------------------------------------------------------------


PRUNE_DEPTH = 8
PRUNE_EVERY = 4
BLOCKS = PRUNE_DEPTH + 3 * PRUNE_EVERY  # > PRUNE_DEPTH + PRUNE_EVERY; the last one prunes


@pytest.fixture
def small_pruning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_mod, "PRUNE_DEPTH", PRUNE_DEPTH)
    monkeypatch.setattr(chain_mod, "PRUNE_EVERY", PRUNE_EVERY)


def _check_state(storage: Storage, number: int) -> None:
    """A fresh State over a stored root reads the right values; the whole trie is present."""
    block_hash = storage.canonical_hash(number)
    root = storage.state_root_at(block_hash)
    assert root == storage.header(block_hash).state_root
    state = State(storage, root)
    assert system.get_nonce(state, ALICE.address) == number  # block n holds alice's nonce n-1
    assert system.get_authorities(state) == SPEC.authorities
    assert len(system.list_clients(state)) == 2
    for _, value_hash in trie_items(storage, root):
        assert storage.get_value(value_hash) is not None


@pytest.mark.usefixtures("small_pruning")
def test_pruning_drops_old_states_only(tmp_path: Path) -> None:
    base = tmp_path / "node"
    c = open_chain(base)
    try:
        author(c, BLOCKS, remarks=True)
        storage = c.storage
        finalized = storage.finalized_header().number
        assert finalized == BLOCKS - 1
        storage.prune()  # pruning also runs as finality advances; make this point exact
        roots = {storage.header(h).state_root for _, h in storage.canonical_hashes()}
        assert len(roots) == BLOCKS + 1  # every block changed the state
        keep_from = finalized - PRUNE_DEPTH
        _check_state(storage, 0)  # genesis state is kept: light clients bootstrap from it
        for number in range(1, keep_from):
            with pytest.raises(NotFound, match="--archive"):
                storage.state_root_at(storage.canonical_hash(number))
            with pytest.raises(NotFound, match="pruned"):
                c.state_at(storage.canonical_hash(number))
            storage.block(storage.canonical_hash(number))  # the block itself stays
        for number in range(keep_from, finalized + 1):
            _check_state(storage, number)
        assert system.get_nonce(c.best_state(), ALICE.address) == BLOCKS
        assert storage.prune() == 0  # nothing left to drop
        author(c, 1, remarks=True)  # authoring carries on over the pruned store
    finally:
        c.close()
    reopened = open_chain(base)
    try:
        _check_state(reopened.storage, BLOCKS + 1)
    finally:
        reopened.close()


@pytest.mark.usefixtures("small_pruning")
def test_archive_keeps_every_state(tmp_path: Path) -> None:
    c = open_chain(tmp_path / "node", archive=True)
    try:
        author(c, BLOCKS, remarks=True)
        assert c.storage.prune() == 0
        for number in range(BLOCKS + 1):
            _check_state(c.storage, number)
    finally:
        c.close()


@pytest.mark.usefixtures("small_pruning")
def test_pruned_store_is_smaller_than_archive(tmp_path: Path) -> None:
    counts = {}
    for archive in (False, True):
        c = open_chain(tmp_path / f"node-{archive}", archive=archive)
        try:
            author(c, BLOCKS, remarks=True)
            counts[archive] = c.storage._conn.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
        finally:
            c.close()
    assert counts[False] < counts[True]


def test_disk_full_is_a_storage_error_and_leaves_the_head(tmp_path: Path, chain: Chain) -> None:
    author(chain, 1)
    conn = chain.storage._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is full from now on
    error: StorageError | None = None
    for _ in range(200):
        before = chain.storage.best_header()
        try:
            author(chain, 1, remarks=True)
        except StorageError as exc:
            error = exc
            break
    assert error is not None, "the database never filled up"
    assert "disk" in str(error)  # not SQLite's "cannot rollback - no transaction is active"
    assert not conn.in_transaction
    assert chain.storage.best_hash() == before.hash
    conn.execute(f"PRAGMA max_page_count = {pages * 100}")
    result = chain.author_block(Slot(before.slot + 2), ALICE)  # the pooled remark goes in now
    assert result is not None
    assert len(result.block.transactions) == 1
    assert chain.storage.best_header().number == before.number + 1


def test_check_db_command_exits_non_zero_on_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deltachain.node.cli import main

    base = tmp_path / "node"
    open_chain(base).close()
    assert main(["node", "check-db", "--base-path", str(base)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
    conn = sqlite3.connect(base / DB_FILE)
    conn.execute("DELETE FROM nodes")
    conn.commit()
    conn.close()
    assert main(["node", "check-db", "--base-path", str(base)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{base / DB_FILE}: the state of canonical block #0 is missing"]


def test_missing_database_with_a_leftover_wal_is_refused(tmp_path: Path) -> None:
    """Deleting only chain.sqlite leaves its -wal: SQLite would replay it into a new file."""
    base = tmp_path / "node"
    c = open_chain(base)
    try:
        author(c, 2)
        wal = base / f"{DB_FILE}-wal"
        assert wal.stat().st_size > 0
        saved = wal.read_bytes()
    finally:
        c.close()
    (base / DB_FILE).unlink()
    wal.write_bytes(saved)  # as a crash would have left it
    with pytest.raises(CorruptDatabase, match="write-ahead log"):
        open_chain(base)
    assert not (base / DB_FILE).exists()
