"""Embedded SQLite storage: blocks, the canonical chain, state trie nodes, finality.

WAL mode with ``synchronous=FULL`` and one ``BEGIN IMMEDIATE`` transaction per block import
(block, state nodes, values, canonical index, head pointer together), so a ``kill -9`` at any
instant leaves the last fully imported block as the head and nothing half-written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deltachain import codec
from deltachain.errors import CorruptDatabase, ForeignDatabase, NotFound, StorageError
from deltachain.primitives.block import Block, Header
from deltachain.primitives.types import BlockNumber, Hash32
from deltachain.runtime.state import StateDiff

SCHEMA_VERSION = 1
DB_FILE = "chain.sqlite"
PRUNE_DEPTH = 256
"""States older than finalized − PRUNE_DEPTH are pruned unless the node runs with --archive."""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE blocks (
    hash BLOB PRIMARY KEY, number INTEGER NOT NULL, parent BLOB NOT NULL,
    state_root BLOB NOT NULL, data BLOB NOT NULL, events BLOB NOT NULL
);
CREATE INDEX blocks_number ON blocks(number);
CREATE TABLE canon (number INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE txs (hash BLOB PRIMARY KEY, block BLOB NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE nodes (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE vals (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE keys (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE justifications (hash BLOB PRIMARY KEY, data BLOB NOT NULL);
"""


@dataclass(frozen=True)
class TxLocation:
    block_hash: Hash32
    block_number: BlockNumber
    index: int


class Storage:
    """One node's database; every method is synchronous and runs on the caller's thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, archive: bool) -> None:
        self._conn = conn
        self.path = path
        self.archive = archive

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, base_path: Path, genesis_block: Block, genesis_diff: StateDiff, chain_id: str,
             *, archive: bool = False, create: bool = True) -> Storage:
        """Open (or with ``create`` initialise) the database for the chain whose genesis is given.

        Raises ForeignDatabase if the directory holds another chain, CorruptDatabase if the file
        is not a usable deltachain database, StorageError if it does not exist and create=False.
        """
        base_path = Path(base_path)
        path = base_path / DB_FILE
        exists = path.exists() and path.stat().st_size > 0
        if not exists and not create:
            raise StorageError(f"no chain database at {path}; start a node with --base-path {base_path}")
        base_path.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=OFF")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise CorruptDatabase(f"{path} is not a usable database ({exc}); move it away or "
                                  "choose another --base-path") from None
        store = cls(conn, path, archive)
        if not tables:
            if not create:
                raise StorageError(f"{path} is empty")
            store._initialise(genesis_block, genesis_diff, chain_id)
            return store
        if "meta" not in tables:
            conn.close()
            raise CorruptDatabase(f"{path} is not a deltachain database (no meta table); "
                                  "choose another --base-path")
        store._check(genesis_block.hash, chain_id)
        return store

    @classmethod
    def open_existing(cls, base_path: Path) -> Storage:
        """Open a node's database without its chain spec (read-side tools such as ``query``)."""
        path = Path(base_path) / DB_FILE
        if not path.exists():
            raise StorageError(f"no chain database at {path}; is --base-path right?")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise CorruptDatabase(f"{path} is not a usable database ({exc})") from None
        store = cls(conn, path, archive=True)
        try:
            store._check(Hash32(store._meta("genesis_hash")), "")
        except (NotFound, sqlite3.DatabaseError) as exc:
            raise CorruptDatabase(f"{path} is not a deltachain database ({exc})") from None
        return store

    def _initialise(self, genesis: Block, diff: StateDiff, chain_id: str) -> None:
        with self._write():
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._put_meta("schema_version", codec.encode(SCHEMA_VERSION))
            self._put_meta("genesis_hash", genesis.hash)
            self._put_meta("chain_id", chain_id.encode())
            self._insert_block(genesis, diff, codec.encode([]))
            self._set_canonical(genesis)
            self._put_meta("finalized", genesis.hash)

    def _check(self, genesis_hash: Hash32, chain_id: str) -> None:
        try:
            version = self._meta("schema_version")
            stored_genesis = self._meta("genesis_hash")
            stored_chain = self._meta("chain_id").decode()
            self._meta("best")
        except (NotFound, sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptDatabase(f"{self.path} is damaged ({exc}); move it away or choose "
                                  "another --base-path") from None
        if codec.decode(version) != SCHEMA_VERSION:
            raise CorruptDatabase(f"{self.path} has schema version {codec.decode(version)}, "
                                  f"this node needs {SCHEMA_VERSION}")
        if stored_genesis != genesis_hash:
            raise ForeignDatabase(
                f"{self.path} holds chain {stored_chain!r} with genesis 0x{stored_genesis.hex()[:16]}…, "
                f"not this chain (0x{genesis_hash.hex()[:16]}…); use another --base-path or the "
                "matching --chain"
            )
        best = self.best_header()
        if self.get_node(best.state_root) is None and best.state_root != bytes(32):
            raise CorruptDatabase(f"{self.path}: the state of the best block is missing")

    def close(self) -> None:
        self._conn.close()

    # --- low level -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _meta(self, key: str) -> bytes:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"meta {key} missing")
        return bytes(row[0])

    def _put_meta(self, key: str, value: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _insert_block(self, block: Block, diff: StateDiff, events: bytes) -> None:
        c = self._conn
        c.executemany("INSERT OR IGNORE INTO nodes(hash, data) VALUES (?, ?)", diff.nodes.items())
        c.executemany("INSERT OR IGNORE INTO vals(hash, data) VALUES (?, ?)", diff.values.items())
        c.executemany("INSERT OR IGNORE INTO keys(hash, data) VALUES (?, ?)", diff.keys.items())
        c.execute(
            "INSERT OR IGNORE INTO blocks(hash, number, parent, state_root, data, events) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (block.hash, block.number, block.header.parent_hash, block.header.state_root,
             block.encode(), events),
        )

    def _set_canonical(self, block: Block) -> None:
        c = self._conn
        c.execute("DELETE FROM canon WHERE number >= ?", (block.number,))
        c.execute("INSERT INTO canon(number, hash) VALUES (?, ?)", (block.number, block.hash))
        c.executemany(
            "INSERT OR REPLACE INTO txs(hash, block, idx) VALUES (?, ?, ?)",
            ((tx.hash, block.hash, i) for i, tx in enumerate(block.transactions)),
        )
        self._put_meta("best", block.hash)

    # --- state store protocol --------------------------------------------------------------

    def get_node(self, node_hash: Hash32) -> bytes | None:
        row = self._conn.execute("SELECT data FROM nodes WHERE hash=?", (node_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_value(self, value_hash: Hash32) -> bytes | None:
        row = self._conn.execute("SELECT data FROM vals WHERE hash=?", (value_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_key(self, key_hash: Hash32) -> bytes | None:
        row = self._conn.execute("SELECT data FROM keys WHERE hash=?", (key_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    # --- blocks ----------------------------------------------------------------------------

    def import_block(self, block: Block, diff: StateDiff, events: bytes, *,
                     make_best: bool = True, finalized: Hash32 | None = None) -> None:
        """Persist a block and its state atomically; with make_best it becomes the head."""
        with self._write():
            self._insert_block(block, diff, events)
            if make_best:
                self._set_canonical(block)
            if finalized is not None:
                self._put_meta("finalized", finalized)

    @property
    def genesis_hash(self) -> Hash32:
        return Hash32(self._meta("genesis_hash"))

    @property
    def chain_id(self) -> str:
        return self._meta("chain_id").decode()

    def best_hash(self) -> Hash32:
        return Hash32(self._meta("best"))

    def finalized_hash(self) -> Hash32:
        return Hash32(self._meta("finalized"))

    def best_header(self) -> Header:
        return self.header(self.best_hash())

    def finalized_header(self) -> Header:
        return self.header(self.finalized_hash())

    def block(self, block_hash: Hash32) -> Block:
        row = self._conn.execute("SELECT data FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            raise NotFound(f"no block 0x{block_hash.hex()}")
        return Block.decode(bytes(row[0]))

    def header(self, block_hash: Hash32) -> Header:
        return self.block(block_hash).header

    def has_block(self, block_hash: Hash32) -> bool:
        q = "SELECT 1 FROM blocks WHERE hash=?"
        return self._conn.execute(q, (block_hash,)).fetchone() is not None

    def canonical_hash(self, number: int) -> Hash32:
        row = self._conn.execute("SELECT hash FROM canon WHERE number=?", (number,)).fetchone()
        if row is None:
            raise NotFound(f"no canonical block at height {number}")
        return Hash32(bytes(row[0]))

    def canonical_hashes(self, start: int = 0) -> Iterable[tuple[int, Hash32]]:
        rows = self._conn.execute("SELECT number, hash FROM canon WHERE number >= ? ORDER BY number",
                                  (start,)).fetchall()
        return [(int(n), Hash32(bytes(h))) for n, h in rows]

    def block_events(self, block_hash: Hash32) -> bytes:
        row = self._conn.execute("SELECT events FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            raise NotFound(f"no block 0x{block_hash.hex()}")
        return bytes(row[0])

    def tx_location(self, tx_hash: Hash32) -> TxLocation:
        row = self._conn.execute(
            "SELECT t.block, b.number, t.idx FROM txs t JOIN blocks b ON b.hash = t.block "
            "WHERE t.hash=?", (tx_hash,)).fetchone()
        if row is None:
            raise NotFound(f"no included transaction 0x{tx_hash.hex()}")
        return TxLocation(Hash32(bytes(row[0])), BlockNumber(int(row[1])), int(row[2]))

    def state_root_at(self, block_hash: Hash32) -> Hash32:
        """State root of a block whose state is still stored; NotFound if pruned."""
        header = self.header(block_hash)
        if header.state_root != bytes(32) and self.get_node(header.state_root) is None:
            raise NotFound(f"the state of block {header.number} was pruned; run the node with "
                           "--archive to keep every state")
        return header.state_root

    def _mark(self, roots: Iterable[Hash32]) -> tuple[set[bytes], set[bytes]]:
        """Every trie node and value reachable from ``roots``; shared subtrees are walked once."""
        nodes: set[bytes] = set()
        values: set[bytes] = set()
        stack = [r for r in roots if r != bytes(32)]
        while stack:
            node_hash = stack.pop()
            if node_hash in nodes:
                continue
            data = self.get_node(node_hash)
            if data is None:
                continue  # a state already pruned earlier
            nodes.add(node_hash)
            if data[0] == 1:
                stack.extend(h for h in (data[1:33], data[33:65]) if h != bytes(32))
            else:
                values.add(data[33:65])
        return nodes, values

    # --- pruning ---------------------------------------------------------------------------

    def prune(self) -> int:
        """Drop trie nodes reachable only from states older than finalized − PRUNE_DEPTH.

        Mark-and-sweep over the kept roots (their structure is shared, so each node is walked
        once); returns how many nodes were deleted. A no-op in archive mode.
        """
        if self.archive:
            return 0
        finalized = self.finalized_header()
        keep_from = max(0, finalized.number - PRUNE_DEPTH)
        roots = [Hash32(bytes(r[0])) for r in self._conn.execute(
            "SELECT state_root FROM blocks WHERE number >= ?", (keep_from,))]
        live_nodes, live_values = self._mark(roots)
        with self._write():
            c = self._conn
            deleted = 0
            for table, live in (("nodes", live_nodes), ("vals", live_values)):
                c.execute("CREATE TEMP TABLE IF NOT EXISTS live(hash BLOB PRIMARY KEY) WITHOUT ROWID")
                c.execute("DELETE FROM live")
                c.executemany("INSERT INTO live(hash) VALUES (?)", ((h,) for h in live))
                deleted += c.execute(
                    f"DELETE FROM {table} WHERE hash NOT IN (SELECT hash FROM live)"  # noqa: S608
                ).rowcount
            c.execute("DELETE FROM live")
        return int(deleted)
