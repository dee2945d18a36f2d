"""Embedded SQLite storage: blocks, the canonical chain, state trie nodes, finality.

WAL mode with ``synchronous=FULL`` and one ``BEGIN IMMEDIATE`` transaction per block import
(block, state nodes, values, canonical index, head pointer together), so a ``kill -9`` at any
instant leaves the last fully imported block as the head and nothing half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deltachain import codec
from deltachain.errors import (
    CorruptDatabase,
    DecodeError,
    ForeignDatabase,
    NotFound,
    StorageError,
)
from deltachain.primitives.block import Block, Header
from deltachain.primitives.types import BlockNumber, Hash32
from deltachain.runtime.state import StateDiff

SCHEMA_VERSION = 1
DB_FILE = "chain.sqlite"
LOCK_FILE = "chain.sqlite.lock"
PRUNE_DEPTH = 256
"""States older than finalized − PRUNE_DEPTH are pruned unless the node runs with --archive."""
MAX_HEIGHT = (1 << 63) - 1
"""SQLite integers are signed 64-bit: no stored block is higher; larger asks find nothing."""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE blocks (
    hash BLOB PRIMARY KEY, number INTEGER NOT NULL, parent BLOB NOT NULL,
    state_root BLOB NOT NULL, data BLOB NOT NULL, events BLOB NOT NULL
);
CREATE INDEX blocks_number ON blocks(number);
CREATE INDEX blocks_parent ON blocks(parent);
CREATE TABLE canon (number INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE txs (hash BLOB PRIMARY KEY, block BLOB NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE nodes (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE vals (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE keys (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE justifications (hash BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE votes (data BLOB PRIMARY KEY, target INTEGER NOT NULL);
"""
_VOTES_TABLE = "CREATE TABLE IF NOT EXISTS votes (data BLOB PRIMARY KEY, target INTEGER NOT NULL)"
"""Finality votes above the finalized block (added after schema 1; created on open if missing)."""
RESYNC_ADVICE = (
    "to resync safely, stop the node, move {path} (and its -wal and -shm files) aside and "
    "start again; a validator keeps its signing-state file"
)


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that has not touched the file yet (no pragma that writes)."""
    try:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.DatabaseError as exc:
        raise CorruptDatabase(
            f"{path} cannot be opened ({exc}); check the path and its "
            "permissions or choose another --base-path"
        ) from None


@dataclass(frozen=True)
class TxLocation:
    block_hash: Hash32
    block_number: BlockNumber
    index: int


_SELECT_DATA = {
    "nodes": "SELECT data FROM nodes WHERE hash=?",
    "vals": "SELECT data FROM vals WHERE hash=?",
}
HEADER_CACHE = 4096
NODE_CACHE = 65_536
"""Trie nodes and values kept in memory (at most ~30 MiB of small blobs)."""


class Storage:
    """One node's database; every method is synchronous and runs on the caller's thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, archive: bool) -> None:
        self._conn = conn
        self.path = path
        self.archive = archive
        self._lock_fd: int | None = None
        self._headers: dict[Hash32, Header] = {}
        self._meta_cache: dict[str, bytes] = {}
        self._nodes: OrderedDict[bytes, bytes] = OrderedDict()
        """Recently read trie nodes and values by hash: content-addressed, so never stale, and
        every transaction check walks the same top of the trie (~7 reads a key)."""

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        base_path: Path,
        genesis_block: Block,
        genesis_diff: StateDiff,
        chain_id: str,
        *,
        archive: bool = False,
        create: bool = True,
    ) -> Storage:
        """Open (or with ``create`` initialise) the database for the chain whose genesis is given.

        Raises ForeignDatabase if the directory holds another chain, CorruptDatabase if the file
        is not a usable deltachain database, StorageError if it does not exist and create=False
        or another process (a running node) has it open. An existing file is only read until it
        has been recognised as this chain's database: a rejected file is left byte for byte as
        it was.
        """
        base_path = Path(base_path)
        path = base_path / DB_FILE
        exists = path.exists()
        if exists and path.is_file() and path.stat().st_size == 0:
            # Never "absent": a new chain from genesis here would let a validator sign votes
            # its lost database had already signed against. Only a missing file starts afresh.
            raise CorruptDatabase(
                f"{path} is empty (0 bytes): the chain database was truncated or wiped; "
                + RESYNC_ADVICE.format(path=path)
            )
        if not exists and not create:
            raise StorageError(
                f"no chain database at {path}; start a node with --base-path {base_path}"
            )
        try:
            base_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the database directory {base_path} "
                f"({exc.strerror or exc}); choose another --base-path"
            ) from None
        if not exists:
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                # SQLite would replay the old database's log into the new one
                raise CorruptDatabase(
                    f"{path} is missing but its write-ahead log {wal} is still there; "
                    + RESYNC_ADVICE.format(path=path)
                )
            cls._create(path, genesis_block, genesis_diff, chain_id)
        store = cls(_connect(path), path, archive)
        try:
            if not store._tables():
                raise CorruptDatabase(
                    f"{path} has no tables: not a deltachain database (a wiped file?); "
                    + RESYNC_ADVICE.format(path=path)
                )
            store._check(genesis_block.hash, chain_id)
            store._lock()
            store._configure()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _create(cls, path: Path, genesis: Block, diff: StateDiff, chain_id: str) -> None:
        """Build a new database beside ``path`` and rename it into place, so ``path`` is either
        absent or a whole database: a crash mid-creation never leaves an empty file there."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        tmp.unlink(missing_ok=True)
        store = cls(_connect(tmp), tmp, archive=False)
        try:
            store._conn.execute("PRAGMA synchronous=FULL")
            store._initialise(genesis, diff, chain_id)
        finally:
            store.close()
        try:
            with contextlib.suppress(FileExistsError):  # another node created it meanwhile
                os.link(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(
                f"cannot create {path} ({exc.strerror or exc}); choose another --base-path"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def open_existing(cls, base_path: Path) -> Storage:
        """Open a node's database without its chain spec (read-side tools such as ``query``).

        Takes no lock (the node may be running) and changes nothing in the file.
        """
        path = Path(base_path) / DB_FILE
        if not path.exists():
            raise StorageError(f"no chain database at {path}; is --base-path right?")
        store = cls(_connect(path), path, archive=True)
        try:
            if not store._tables():
                raise CorruptDatabase(f"{path} is empty, not a deltachain database")
            store._check(None, None)
        except BaseException:
            store.close()
            raise
        return store

    def _tables(self) -> set[str]:
        try:
            return {
                r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            raise CorruptDatabase(
                f"{self.path} is not a usable database ({exc}); move it away or "
                "choose another --base-path"
            ) from None

    def _configure(self) -> None:
        """Durability settings; run only on a file already known to be ours (they write to it)."""
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StorageError(
                f"{self.path}: cannot switch to WAL mode (got {mode}); put "
                "--base-path on a local file system"
            )
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=OFF")
        with self._write():
            self._conn.execute(_VOTES_TABLE)
            if self.meta_value("database_id") is None:
                self._put_meta("database_id", secrets.token_bytes(16))

    def _lock(self) -> None:
        """Hold an exclusive lock on the directory for this process's lifetime (one writer).

        ``flock`` is released by the kernel when the process dies, so a killed node never leaves
        a stale lock behind.
        """
        if self._lock_fd is not None:
            return
        lock_path = self.path.with_name(LOCK_FILE)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot create {lock_path} ({exc.strerror or exc}); choose another --base-path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(
                f"{self.path.parent} is in use by another node (pid {holder}); "
                "stop it or choose another --base-path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

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
            self._put_meta("database_id", secrets.token_bytes(16))

    def _check(self, genesis_hash: Hash32 | None, chain_id: str | None) -> None:
        """Recognise the file as a deltachain database (of this chain, when given); read-only."""
        if "meta" not in self._tables():
            raise CorruptDatabase(
                f"{self.path} is not a deltachain database (no meta table); "
                "move it away or choose another --base-path"
            )
        damaged = f"{self.path} is damaged"
        advice = (
            "move it aside (with its -wal/-shm files) to resync, keeping a validator's "
            "signing-state file, or choose another --base-path"
        )
        try:
            version = codec.decode(self._meta("schema_version"))
            stored_genesis = self._meta("genesis_hash")
            stored_chain = self._meta("chain_id").decode()
            best = self.best_header()
            finalized = self.finalized_header()
            canonical_best = self.canonical_hash(best.number)
        except (NotFound, DecodeError, sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptDatabase(f"{damaged} ({exc}); {advice}") from None
        if version != SCHEMA_VERSION:
            raise CorruptDatabase(
                f"{self.path} has schema version {version!r}, "
                f"this node needs {SCHEMA_VERSION}; {advice}"
            )
        if genesis_hash is not None and stored_genesis != genesis_hash:
            wanted = f"{chain_id!r} " if chain_id else ""
            raise ForeignDatabase(
                f"{self.path} holds chain {stored_chain!r} with genesis "
                f"0x{stored_genesis.hex()[:16]}…, not this chain {wanted}"
                f"(0x{genesis_hash.hex()[:16]}…); use another --base-path or the matching --chain"
            )
        if chain_id is not None and stored_chain != chain_id:
            raise ForeignDatabase(
                f"{self.path} holds chain {stored_chain!r}, not {chain_id!r}; use another "
                "--base-path or the matching --chain"
            )
        if canonical_best != best.hash or finalized.number > best.number:
            raise CorruptDatabase(
                f"{damaged} (the canonical index disagrees with the head); {advice}"
            )
        try:
            best_state = self.get_node(best.state_root)
        except sqlite3.DatabaseError as exc:
            raise CorruptDatabase(f"{damaged} ({exc}); {advice}") from None
        if best_state is None and best.state_root != bytes(32):
            raise CorruptDatabase(f"{damaged} (the state of the best block is missing); {advice}")

    def close(self) -> None:
        """Close the database, then release the directory lock (in that order)."""
        try:
            self._conn.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # --- low level -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One atomic write transaction; a failed COMMIT (disk full, I/O error) rolls back too.

        SQLite's operational failures (disk full, I/O error, locked) become StorageError with
        the path, so the node stops with a one-line error rather than a traceback.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                self._meta_cache.clear()  # it may hold values the rollback undid
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StorageError(
                f"cannot write to {self.path} ({exc}); check free disk space "
                "and that no other program holds the database"
            ) from None

    def _meta(self, key: str) -> bytes:
        value = self.meta_value(key)
        if value is None:
            raise NotFound(f"meta {key} missing")
        return value

    def _put_meta(self, key: str, value: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        self._meta_cache[key] = bytes(value)

    def _insert_block(self, block: Block, diff: StateDiff, events: bytes) -> None:
        c = self._conn
        c.executemany("INSERT OR IGNORE INTO nodes(hash, data) VALUES (?, ?)", diff.nodes.items())
        c.executemany("INSERT OR IGNORE INTO vals(hash, data) VALUES (?, ?)", diff.values.items())
        c.executemany("INSERT OR IGNORE INTO keys(hash, data) VALUES (?, ?)", diff.keys.items())
        c.execute(
            "INSERT OR IGNORE INTO blocks(hash, number, parent, state_root, data, events) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                block.hash,
                block.number,
                block.header.parent_hash,
                block.header.state_root,
                block.encode(),
                events,
            ),
        )

    def _set_canonical(self, block: Block) -> tuple[list[Hash32], list[Hash32]]:
        """Make ``block`` the head: rewrite the canonical index from where its branch meets it.

        Returns (retracted, enacted) block hashes, oldest first, so the pool can take back the
        transactions of a reorged-out branch.
        """
        c = self._conn
        enacted: list[Block] = [block]
        while enacted[-1].number > 0:
            parent_hash = enacted[-1].header.parent_hash
            row = c.execute(
                "SELECT hash FROM canon WHERE number=?", (enacted[-1].number - 1,)
            ).fetchone()
            if row is not None and bytes(row[0]) == parent_hash:
                break
            enacted.append(self.block(parent_hash))
        enacted.reverse()
        fork = enacted[0].number
        retracted = [
            Hash32(bytes(r[0]))
            for r in c.execute("SELECT hash FROM canon WHERE number >= ? ORDER BY number", (fork,))
        ]
        for old in retracted:
            c.execute("DELETE FROM txs WHERE block=?", (old,))
        c.execute("DELETE FROM canon WHERE number >= ?", (fork,))
        for item in enacted:
            c.execute("INSERT INTO canon(number, hash) VALUES (?, ?)", (item.number, item.hash))
            c.executemany(
                "INSERT OR REPLACE INTO txs(hash, block, idx) VALUES (?, ?, ?)",
                ((tx.hash, item.hash, i) for i, tx in enumerate(item.transactions)),
            )
        self._put_meta("best", block.hash)
        return retracted, [b.hash for b in enacted]

    # --- state store protocol --------------------------------------------------------------

    def _cached(self, table: str, item_hash: Hash32) -> bytes | None:
        cache_key = table[0].encode() + item_hash
        found = self._nodes.get(cache_key)
        if found is not None:
            self._nodes.move_to_end(cache_key)
            return found
        row = self._conn.execute(_SELECT_DATA[table], (item_hash,)).fetchone()
        if row is None:
            return None
        data = self._nodes[cache_key] = bytes(row[0])
        if len(self._nodes) > NODE_CACHE:
            self._nodes.popitem(last=False)
        return data

    def get_node(self, node_hash: Hash32) -> bytes | None:
        return self._cached("nodes", node_hash)

    def get_value(self, value_hash: Hash32) -> bytes | None:
        return self._cached("vals", value_hash)

    def get_key(self, key_hash: Hash32) -> bytes | None:
        row = self._conn.execute("SELECT data FROM keys WHERE hash=?", (key_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    # --- blocks ----------------------------------------------------------------------------

    def import_block(
        self,
        block: Block,
        diff: StateDiff,
        events: bytes,
        *,
        make_best: bool = True,
    ) -> tuple[list[Hash32], list[Hash32]]:
        """Persist a block and its state atomically; with make_best it becomes the head.

        Returns (retracted, enacted) canonical blocks when the head moved, else ([], []).
        """
        with self._write():
            self._insert_block(block, diff, events)
            moved = self._set_canonical(block) if make_best else ([], [])
        self._headers[block.hash] = block.header  # stored now: fork choice reads it next
        return moved

    def set_best(self, block_hash: Hash32) -> tuple[list[Hash32], list[Hash32]]:
        """Switch the head to an already imported block (a reorg); see ``_set_canonical``."""
        block = self.block(block_hash)
        with self._write():
            return self._set_canonical(block)

    def finalize(self, block_hash: Hash32, justification: bytes) -> None:
        """Record finality of a canonical block with its proof (fsynced before returning)."""
        header = self.header(block_hash)
        if self.canonical_hash(header.number) != block_hash:
            raise NotFound(f"block #{header.number} to finalize is not canonical")
        with self._write():
            self._put_meta("finalized", block_hash)
            self._conn.execute(
                "INSERT OR REPLACE INTO justifications(hash, data) VALUES (?, ?)",
                (block_hash, justification),
            )
            self._conn.execute("DELETE FROM votes WHERE target <= ?", (header.number,))

    def put_vote(self, vote: bytes, target: int) -> None:
        """Keep a counted finality vote above finality, so a restart still knows what it
        justified (deleted once its target is finalized)."""
        with self._write():
            self._conn.execute(
                "INSERT OR IGNORE INTO votes(data, target) VALUES (?, ?)", (vote, target)
            )

    def votes(self) -> list[bytes]:
        """Stored finality votes, lowest target first (the order they can be re-counted in)."""
        rows = self._conn.execute("SELECT data FROM votes ORDER BY target").fetchall()
        return [bytes(r[0]) for r in rows]

    def database_id(self) -> bytes:
        """Random id written when this database was created: a resync gets a new one."""
        return self._meta("database_id")

    def justification(self, block_hash: Hash32) -> bytes:
        row = self._conn.execute(
            "SELECT data FROM justifications WHERE hash=?", (block_hash,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no justification stored for 0x{block_hash.hex()}")
        return bytes(row[0])

    def latest_justification(self, at_or_below: int | None = None) -> bytes:
        """The proof for the newest finalized canonical block (at or below a height)."""
        limit = self.finalized_header().number if at_or_below is None else at_or_below
        limit = min(limit, MAX_HEIGHT)  # a peer may ask for any u64; SQLite holds i64
        row = self._conn.execute(
            "SELECT j.data FROM justifications j JOIN blocks b ON b.hash = j.hash "
            "JOIN canon c ON c.hash = j.hash WHERE b.number <= ? ORDER BY b.number DESC LIMIT 1",
            (limit,),
        ).fetchone()
        if row is None:
            raise NotFound("no justification stored yet (nothing finalized beyond genesis)")
        return bytes(row[0])

    def meta_value(self, key: str) -> bytes | None:
        """Meta rows are read on every call (best, finalized): cached; only this process
        writes them (the database is locked), and a rolled-back write clears the cache."""
        found = self._meta_cache.get(key)
        if found is None:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row is None:
                return None
            found = self._meta_cache[key] = bytes(row[0])
        return found

    def put_meta_value(self, key: str, value: bytes) -> None:
        """Durable small records (e.g. the last vote signed): fsynced before returning."""
        with self._write():
            self._put_meta(key, value)

    def leaves(self, above: int) -> list[Header]:
        """Blocks above height ``above`` that have no child: the candidate heads."""
        rows = self._conn.execute(
            "SELECT b.hash FROM blocks b WHERE b.number > ? AND NOT EXISTS "
            "(SELECT 1 FROM blocks c WHERE c.parent = b.hash)",
            (above,),
        ).fetchall()
        return [self.header(Hash32(bytes(r[0]))) for r in rows]

    def header_or_none(self, block_hash: Hash32) -> Header | None:
        try:
            return self.header(block_hash)
        except NotFound:
            return None

    def is_ancestor(self, ancestor: Hash32, descendant: Hash32) -> bool:
        """True if ``ancestor`` is ``descendant`` or on its parent chain (walks parents)."""
        target = self.header_or_none(ancestor)
        node = self.header_or_none(descendant)
        if target is None or node is None:
            return False
        canonical = self._conn.execute(
            "SELECT 1 FROM canon WHERE number=? AND hash=?", (node.number, node.hash)
        ).fetchone()
        if canonical is not None:  # both on the canonical chain: compare heights
            row = self._conn.execute(
                "SELECT hash FROM canon WHERE number=?", (target.number,)
            ).fetchone()
            return row is not None and bytes(row[0]) == ancestor
        while node.number > target.number:
            parent = self.header_or_none(node.parent_hash)
            if parent is None:
                return False
            node = parent
        return node.hash == ancestor

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
        """Headers are read on every import (fork choice walks parents): cached, since a
        block's header never changes, and decoding its whole block each time costs ~1 ms per
        100 transactions."""
        found = self._headers.get(block_hash)
        if found is None:
            found = self._headers[block_hash] = self.block(block_hash).header
            if len(self._headers) > HEADER_CACHE:
                self._headers.pop(next(iter(self._headers)))
        return found

    def has_block(self, block_hash: Hash32) -> bool:
        q = "SELECT 1 FROM blocks WHERE hash=?"
        return self._conn.execute(q, (block_hash,)).fetchone() is not None

    def canonical_hash(self, number: int) -> Hash32:
        if not 0 <= number <= MAX_HEIGHT:
            raise NotFound(f"no canonical block at height {number}")
        row = self._conn.execute("SELECT hash FROM canon WHERE number=?", (number,)).fetchone()
        if row is None:
            raise NotFound(f"no canonical block at height {number}")
        return Hash32(bytes(row[0]))

    def canonical_hashes(self, start: int = 0, limit: int = -1) -> Iterable[tuple[int, Hash32]]:
        """Canonical (number, hash) pairs from ``start``; ``limit`` caps them (-1: all)."""
        if start > MAX_HEIGHT:
            return []  # no block can be that high (a peer may ask for any u64)
        rows = self._conn.execute(
            "SELECT number, hash FROM canon WHERE number >= ? ORDER BY number LIMIT ?",
            (start, limit),
        ).fetchall()
        return [(int(n), Hash32(bytes(h))) for n, h in rows]

    def block_events(self, block_hash: Hash32) -> bytes:
        row = self._conn.execute("SELECT events FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            raise NotFound(f"no block 0x{block_hash.hex()}")
        return bytes(row[0])

    def tx_location(self, tx_hash: Hash32) -> TxLocation:
        row = self._conn.execute(
            "SELECT t.block, b.number, t.idx FROM txs t JOIN blocks b ON b.hash = t.block "
            "WHERE t.hash=?",
            (tx_hash,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no included transaction 0x{tx_hash.hex()}")
        return TxLocation(Hash32(bytes(row[0])), BlockNumber(int(row[1])), int(row[2]))

    def state_root_at(self, block_hash: Hash32) -> Hash32:
        """State root of a block whose state is still stored; NotFound if pruned."""
        header = self.header(block_hash)
        if header.state_root != bytes(32) and self.get_node(header.state_root) is None:
            raise NotFound(
                f"the state of block {header.number} was pruned; run the node with "
                "--archive to keep every state"
            )
        return header.state_root

    def kept_states(self) -> list[Hash32]:
        """Blocks whose state survives pruning: genesis and every finalized authority-set
        change, so light clients can always prove the set they must switch to (warp sync)."""
        raw = self.meta_value("kept_states")
        return [self.canonical_hash(0), *([] if raw is None else codec.decode(raw))]

    def keep_state(self, block_hash: Hash32) -> None:
        kept = self.kept_states()[1:]
        if block_hash not in kept:
            self.put_meta_value("kept_states", codec.encode([*kept, block_hash]))

    def _mark(self, roots: Iterable[Hash32]) -> tuple[set[bytes], set[bytes]]:
        """Every trie node and value reachable from ``roots``; shared subtrees are walked once."""
        nodes: set[bytes] = set()
        values: set[bytes] = set()
        stack: list[bytes] = [r for r in roots if r != bytes(32)]
        while stack:
            node_hash = stack.pop()
            if node_hash in nodes:
                continue
            data = self.get_node(Hash32(node_hash))
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
        roots = [
            Hash32(bytes(r[0]))
            for r in self._conn.execute(
                "SELECT state_root FROM blocks WHERE number >= ?", (keep_from,)
            )
        ]
        roots += [self.header(h).state_root for h in self.kept_states()]
        live_nodes, live_values = self._mark(roots)
        with self._write():
            c = self._conn
            # Forks that lost to finality can never become canonical again.
            c.execute(
                "DELETE FROM blocks WHERE number <= ? AND hash NOT IN (SELECT hash FROM canon)",
                (finalized.number,),
            )
            # What pruning deletes must read as missing again (a pruned state says --archive).
            self._headers.clear()
            self._nodes.clear()
            deleted = 0
            for table, live in (("nodes", live_nodes), ("vals", live_values)):
                c.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS live(hash BLOB PRIMARY KEY) WITHOUT ROWID"
                )
                c.execute("DELETE FROM live")
                c.executemany("INSERT INTO live(hash) VALUES (?)", ((h,) for h in live))
                deleted += c.execute(
                    f"DELETE FROM {table} WHERE hash NOT IN (SELECT hash FROM live)"  # noqa: S608
                ).rowcount
            c.execute("DELETE FROM live")
        return int(deleted)


def check_database(base_path: Path) -> list[str]:
    """Every problem found in a node's database, one line each (``deltachain node check-db``).

    SQLite's own ``PRAGMA integrity_check``, then the chain's invariants: the head and the
    finalized block are canonical and finalized ≤ best; every canonical block is stored under
    its height with its parent one below; every canonical block above the pruning horizon has
    its state. Read-only: takes no lock and writes nothing.
    """
    path = Path(base_path) / DB_FILE
    if not path.exists():
        return [f"{path}: no chain database (a node starting here begins a new chain)"]
    if path.stat().st_size == 0:
        return [f"{path}: empty file (0 bytes), not a database; a node refuses to start on it"]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        return [f"{path}: cannot be opened ({exc})"]
    store = Storage(conn, path, archive=True)
    try:
        return _problems(store)
    except sqlite3.DatabaseError as exc:
        return [f"{path}: unreadable ({exc})"]
    finally:
        store.close()


def _problems(store: Storage) -> list[str]:
    c = store._conn
    name = str(store.path)
    problems = [
        f"{name}: integrity_check: {row[0]}"
        for row in c.execute("PRAGMA integrity_check").fetchall()
        if row[0] != "ok"
    ]
    tables = store._tables()
    missing = {"meta", "blocks", "canon", "nodes", "justifications"} - tables
    if missing:
        return [*problems, f"{name}: not a deltachain database (no {', '.join(sorted(missing))})"]
    try:
        best, finalized = store.best_header(), store.finalized_header()
    except (NotFound, DecodeError) as exc:
        return [*problems, f"{name}: head or finalized block missing ({exc})"]
    if finalized.number > best.number:
        problems.append(f"{name}: finalized #{finalized.number} is above best #{best.number}")
    for what, header in (("best", best), ("finalized", finalized)):
        row = c.execute("SELECT hash FROM canon WHERE number=?", (header.number,)).fetchone()
        if row is None or bytes(row[0]) != header.hash:
            problems.append(f"{name}: the {what} block #{header.number} is not canonical")
    horizon = max(0, finalized.number - PRUNE_DEPTH)
    kept = set(store.kept_states()) if "meta" in tables else set()
    parent: Hash32 | None = None
    expected = 0
    for number, block_hash in store.canonical_hashes(0):
        if number != expected:
            problems.append(f"{name}: canonical heights jump from #{expected - 1} to #{number}")
            parent = None
        expected = number + 1
        stored = store.header_or_none(block_hash)
        if stored is None:
            problems.append(f"{name}: canonical block #{number} is not stored")
            parent = None
            continue
        header = stored
        if header.number != number:
            problems.append(f"{name}: canonical #{number} holds block #{header.number}")
        if parent is not None and header.parent_hash != parent:
            problems.append(f"{name}: canonical #{number} does not link to #{number - 1}")
        parent = block_hash
        wants_state = number >= horizon or block_hash in kept
        if (
            wants_state
            and header.state_root != bytes(32)
            and store.get_node(header.state_root) is None
        ):
            problems.append(f"{name}: the state of canonical block #{number} is missing")
    if expected != best.number + 1:
        problems.append(
            f"{name}: the canonical chain ends at #{expected - 1}, best is #{best.number}"
        )
    return problems
