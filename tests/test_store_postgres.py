"""The PostgreSQL store: what only it has (its schema in a shared database,
its URL, its connections to a server that may go away). Every Store method is
tested on both stores in test_store.py."""

from __future__ import annotations

import gc
import multiprocessing
import os
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from pg import admin_connection, fresh_schema, race
from radius_mfa.errors import AlreadyExistsError, NotFoundError, StoreError
from radius_mfa.model import Device, Pairing, Push, Token, User
from radius_mfa.secretbox import SecretBox
from radius_mfa.store import open_store
from radius_mfa.store import postgres as postgres_module
from radius_mfa.store.postgres import PostgresStore, redacted_label, schema_version

NOW = 1_700_000_000.0


def schema_of(url: str) -> str:
    return url.rsplit("%3D", 1)[1]


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    return SecretBox.from_file(str(tmp_path / "store.key"))


@pytest.fixture
def admin():
    with admin_connection() as conn:
        yield conn


@pytest.fixture
def opened():
    """Stores a test opens, closed at its end."""
    stores: list[PostgresStore] = []
    yield stores
    for store in stores:
        store.close()


def open_pg(opened: list, url: str, box: SecretBox) -> PostgresStore:
    store = PostgresStore(url, box)
    opened.append(store)
    return store


def hotp(serial: str, user: str | None = None) -> Token:
    return Token(serial=serial, type="hotp", secret="GEZDGNBVGY3TQOJQ", user=user, created=NOW)


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll a real peer until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def kill_backend(admin: psycopg.Connection, conn: psycopg.Connection) -> None:
    """End the session behind ``conn`` as an administrator (or a server
    restart) would, and wait until ``conn`` has heard of it."""
    pid = conn.info.backend_pid
    assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    wait_for(lambda: bool(poller.poll(0)))


# --- schema -------------------------------------------------------------------


def test_tables_and_version_are_made_in_the_schema_of_the_url(pg_url, box, opened, admin) -> None:
    open_pg(opened, pg_url, box)
    schema = schema_of(pg_url)
    tables = {row[0] for row in admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
    assert postgres_module.OUR_TABLES <= tables
    assert admin.execute(f"SELECT version FROM {schema}.schema_version").fetchall() == [(schema_version(),)]
    assert not admin.execute("SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = 'tokens'"
                             ).fetchall()


def test_reopening_keeps_the_data(pg_url, box, opened) -> None:
    open_pg(opened, pg_url, box).add_user(User("alice", created=NOW))
    assert open_pg(opened, pg_url, box).get_user("alice") == User("alice", created=NOW)


def test_newer_schema_is_refused(pg_url, box, opened, admin) -> None:
    open_pg(opened, pg_url, box)
    admin.execute(f"UPDATE {schema_of(pg_url)}.schema_version SET version = 99")
    with pytest.raises(StoreError, match="99.*upgrade radius-mfa"):
        PostgresStore(pg_url, box)


def test_migration_adds_a_table_and_keeps_data(pg_url, box, opened, admin, monkeypatch) -> None:
    open_pg(opened, pg_url, box).add_user(User("alice", created=NOW))
    step = ('CREATE TABLE gadgets (id TEXT PRIMARY KEY, "user" TEXT REFERENCES users (name))',)
    monkeypatch.setattr(postgres_module, "MIGRATIONS", postgres_module.MIGRATIONS + (step,))
    store = open_pg(opened, pg_url, box)
    assert store.get_user("alice") == User("alice", created=NOW)
    schema = schema_of(pg_url)
    assert admin.execute(f"SELECT version FROM {schema}.schema_version").fetchone()[0] == schema_version()
    assert admin.execute(f"SELECT count(*) FROM {schema}.gadgets").fetchone()[0] == 0


def test_failed_migration_changes_nothing(pg_url, box, opened, admin, monkeypatch) -> None:
    open_pg(opened, pg_url, box)
    before = len(postgres_module.MIGRATIONS)
    step = ("CREATE TABLE gadgets (id TEXT PRIMARY KEY)", "THIS IS NOT SQL")
    monkeypatch.setattr(postgres_module, "MIGRATIONS", postgres_module.MIGRATIONS + (step,))
    with pytest.raises(StoreError, match="open failed: syntax error"):
        PostgresStore(pg_url, box)
    schema = schema_of(pg_url)
    assert admin.execute(f"SELECT version FROM {schema}.schema_version").fetchone()[0] == before
    assert admin.execute("SELECT to_regclass(%s)", (f"{schema}.gadgets",)).fetchone()[0] is None


def test_a_store_of_the_previous_version_upgrades_to_push_approval(pg_url, box, opened, admin,
                                                                   monkeypatch) -> None:
    previous = postgres_module.MIGRATIONS[:-1]
    with monkeypatch.context() as patch:
        patch.setattr(postgres_module, "MIGRATIONS", previous)
        open_pg(opened, pg_url, box).add_user(User("alice", created=NOW))
    schema = schema_of(pg_url)
    assert admin.execute(f"SELECT version FROM {schema}.schema_version").fetchone()[0] == len(previous)
    admin.execute(f'INSERT INTO {schema}.code_sends ("user", time) VALUES (%s, %s)', ("alice", NOW))

    store = open_pg(opened, pg_url, box)
    assert admin.execute(f"SELECT version FROM {schema}.schema_version").fetchone()[0] == schema_version()
    assert admin.execute(f'SELECT "user", kind, time FROM {schema}.code_sends').fetchall() == [("alice", "code", NOW)]
    assert store.get_user("alice") == User("alice", created=NOW)
    assert store.allow_send("alice", NOW + 1, 1, 300) is False              # the old send was a code
    assert store.allow_send("alice", NOW + 1, 1, 300, kind="push") is True
    store.add_pairing(Pairing("ab" * 32, "alice", NOW, NOW + 600))
    device = store.complete_pairing("ab" * 32, Device("d0123456789abcdef", "", "phone", "a2V5"), NOW + 1)
    assert store.list_devices("alice") == [device]
    store.put_push(Push("0" * 32, "alice", "vpn", None, None, NOW, NOW + 60))
    assert [p.id for p in store.pending_pushes("alice", NOW)] == ["0" * 32]


def test_servers_starting_together_migrate_once(pg_url, box, opened, monkeypatch) -> None:
    step = ("CREATE TABLE gadgets (id TEXT PRIMARY KEY)",)
    monkeypatch.setattr(postgres_module, "MIGRATIONS", postgres_module.MIGRATIONS + (step,))
    stores = race([lambda: PostgresStore(pg_url, box)] * 6)
    opened.extend(stores)
    stores[0].add_user(User("alice"))
    assert all(s.get_user("alice") is not None for s in stores)


def test_other_tables_in_the_schema_are_left_alone(pg_url, box, opened, admin) -> None:
    schema = schema_of(pg_url)
    admin.execute(f"CREATE TABLE {schema}.invoices (id INTEGER PRIMARY KEY)")
    admin.execute(f"INSERT INTO {schema}.invoices VALUES (7)")
    open_pg(opened, pg_url, box).add_user(User("alice"))
    assert admin.execute(f"SELECT id FROM {schema}.invoices").fetchall() == [(7,)]


def test_a_table_of_ours_made_by_something_else_is_refused(pg_url, box, admin) -> None:
    admin.execute(f"CREATE TABLE {schema_of(pg_url)}.users (id INTEGER)")
    with pytest.raises(StoreError, match="holds a table users that radius-mfa did not make"):
        PostgresStore(pg_url, box)


def test_another_applications_schema_version_table_is_refused(pg_url, box, admin) -> None:
    admin.execute(f"CREATE TABLE {schema_of(pg_url)}.schema_version (installed_rank INTEGER, version TEXT)")
    with pytest.raises(StoreError, match="holds a table schema_version that radius-mfa did not make"):
        PostgresStore(pg_url, box)


def test_a_search_path_without_an_existing_schema_is_refused(box) -> None:
    from pg import schema_url

    with pytest.raises(StoreError, match="no schema to create its tables in"):
        PostgresStore(schema_url("t_does_not_exist"), box)


def test_stores_in_two_schemas_of_one_database_are_apart(box, opened) -> None:
    with fresh_schema() as first_url, fresh_schema() as second_url:
        first, second = open_pg(opened, first_url, box), open_pg(opened, second_url, box)
        first.add_user(User("alice"))
        assert second.get_user("alice") is None and second.list_users() == []


# --- imports in batches ---------------------------------------------------------


def test_a_hundred_thousand_tokens_import_in_seconds(pg_url, box, opened, admin) -> None:
    store = open_pg(opened, pg_url, box)
    started = time.monotonic()
    assert store.add_tokens(hotp(f"H{i:06d}") for i in range(100_000)) == 100_000
    assert time.monotonic() - started < 30
    assert admin.execute(f"SELECT count(*) FROM {schema_of(pg_url)}.tokens").fetchone()[0] == 100_000


def test_a_serial_taken_in_a_later_batch_is_named_and_nothing_is_written(pg_url, box, opened) -> None:
    store = open_pg(opened, pg_url, box)
    store.add_token(hotp("H02500"))
    with pytest.raises(AlreadyExistsError, match="token H02500 exists"):
        store.add_tokens(hotp(f"H{i:05d}") for i in range(3000))
    assert [t.serial for t in store.list_tokens()] == ["H02500"]


def test_a_serial_repeated_across_batches_is_named(pg_url, box, opened) -> None:
    store = open_pg(opened, pg_url, box)
    serials = [f"H{i:05d}" for i in range(1500)] + ["H00010"]
    with pytest.raises(AlreadyExistsError, match="token H00010 exists"):
        store.add_tokens(hotp(serial) for serial in serials)
    assert store.list_tokens() == []


def test_an_import_names_a_user_repeated_across_batches(pg_url, box, opened) -> None:
    store = open_pg(opened, pg_url, box)
    rows = [(User(f"u{i:04d}"), [hotp(f"T{i:04d}", f"u{i:04d}")]) for i in range(1200)]
    rows.append((User("u0003"), []))
    with pytest.raises(AlreadyExistsError, match="user u0003 exists"):
        store.add_users(iter(rows))
    assert store.list_users() == [] and store.list_tokens() == []


def test_a_token_of_a_user_from_an_earlier_batch_is_accepted(pg_url, box, opened) -> None:
    store = open_pg(opened, pg_url, box)
    rows = [(User(f"u{i:04d}"), []) for i in range(1100)]
    rows.append((User("late"), [hotp("T1", "u0001"), hotp("T2", "late")]))
    assert store.add_users(iter(rows)) == 1101
    assert store.get_token("T1").user == "u0001"
    with pytest.raises(NotFoundError, match="token T3: no such user: ghost"):
        store.add_users([(User("new"), [hotp("T3", "ghost")])])


# --- connections ----------------------------------------------------------------


def test_a_connection_the_server_ended_is_replaced_on_the_next_call(pg_url, box, opened, admin) -> None:
    store = open_pg(opened, pg_url, box)
    store.add_user(User("alice", created=NOW))
    before = store._conn()
    killed = before.info.backend_pid
    kill_backend(admin, before)
    assert store.get_user("alice") == User("alice", created=NOW)
    assert store._conn() is not before and store._conn().info.backend_pid != killed


def test_a_connection_that_breaks_in_a_call_fails_it_and_the_next_call_reconnects(pg_url, box, opened, admin):
    store = open_pg(opened, pg_url, box)
    conn = store._conn()

    def tokens():
        yield hotp("H1")
        kill_backend(admin, conn)      # in the middle of the import's transaction
        yield hotp("H2")

    with pytest.raises(StoreError, match="add tokens failed") as caught:
        store.add_tokens(tokens())
    assert "\n" not in str(caught.value)
    assert store.list_tokens() == []
    assert store._conn() is not conn


def test_each_pool_thread_reconnects_on_its_own(pg_url, box, opened, admin) -> None:
    store = open_pg(opened, pg_url, box)
    with ThreadPoolExecutor(max_workers=3) as pool:      # the server's store threads
        def on_each_thread(work):
            barrier = threading.Barrier(3)               # one call per thread
            return list(pool.map(lambda _: (barrier.wait(), work())[1], range(3)))

        conns = on_each_thread(store._conn)
        assert len({id(conn) for conn in conns}) == 3
        for conn in conns:
            kill_backend(admin, conn)
        assert on_each_thread(lambda: store.get_user("x")) == [None] * 3
        assert not {id(conn) for conn in on_each_thread(store._conn)} & {id(conn) for conn in conns}


def test_a_forked_child_leaves_the_parents_session_alone(pg_url, box, opened) -> None:
    store = open_pg(opened, pg_url, box)
    store.add_user(User("alice", created=NOW))
    parent_pid = store._conn().info.backend_pid
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child() -> None:
        mine = store._conn().info.backend_pid
        gc.collect()                    # the parent's connection, collected here
        results.put((mine, store.get_user("alice").name))

    process = context.Process(target=child)
    process.start()
    child_pid, name = results.get(timeout=30)
    process.join(timeout=30)
    assert process.exitcode == 0
    assert (name, child_pid != parent_pid) == ("alice", True)
    assert store._conn().info.backend_pid == parent_pid      # the parent's session lives on
    assert store.get_user("alice") is not None


# --- URLs and errors -------------------------------------------------------------


def _silent_server() -> tuple[socket.socket, int]:
    """A port that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, listener.getsockname()[1]


def test_a_closed_port_is_a_store_error_at_once(box) -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot connect to the store postgresql://127.0.0.1:1/mfa: .*refused"):
        PostgresStore("postgresql://mfa:hunter2@127.0.0.1:1/mfa", box)
    assert time.monotonic() - started < 5


def test_a_server_that_never_answers_times_out(box, monkeypatch) -> None:
    monkeypatch.setattr(postgres_module, "CONNECT_TIMEOUT_SECONDS", 2)
    listener, port = _silent_server()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot connect.*timeout") as caught:
            PostgresStore(f"postgresql://mfa:hunter2@127.0.0.1:{port}/mfa", box)
        assert time.monotonic() - started < 10
        assert "hunter2" not in str(caught.value)
    finally:
        listener.close()


def test_the_password_is_never_in_an_error(pg_url, box, opened, admin) -> None:
    url = pg_url.replace("postgres@", "postgres:hunter2@")      # trust auth: accepted, unused
    store = open_pg(opened, url, box)
    admin.execute(f"DROP TABLE {schema_of(pg_url)}.auth_log")
    with pytest.raises(StoreError) as caught:
        store.auth_records()
    message = str(caught.value)
    assert message.startswith("store postgresql://127.0.0.1:5432/radius_mfa_test: read auth log failed:")
    assert "hunter2" not in message and "search_path" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mfa:hunter2@127.0.0.1:1/mfa",
        "postgres://mfa:hunter2@127.0.0.1:1/mfa",
        "postgresql+psycopg://mfa:hunter2@127.0.0.1:1/mfa",
        "postgresql://mfa@127.0.0.1:1/mfa?password=hunter2",
        "postgresql://mfa:hunter2@127.0.0.1:notaport/mfa",
        "postgresql://mfa:hunter2@127.0.0.1:1/mfa?nosuchoption=hunter2",
    ],
)
def test_open_store_never_echoes_a_postgresql_url(url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        open_store(url, str(tmp_path / "store.key"))
    assert "hunter2" not in str(caught.value)


def test_the_label_names_host_port_and_database_only() -> None:
    assert redacted_label("postgresql://mfa:hunter2@db.example.org:6432/radius?sslmode=require") == (
        "postgresql://db.example.org:6432/radius")
    assert redacted_label("postgres://db.example.org/radius") == "postgresql://db.example.org/radius"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg", "PostgreSQL"])
def test_open_store_accepts_each_spelling(scheme: str, pg_url: str, tmp_path: Path) -> None:
    url = pg_url.replace("postgresql://", f"{scheme}://", 1)
    store = open_store(url + "&application_name=mfa-test&sslmode=disable", str(tmp_path / "store.key"))
    try:
        assert isinstance(store, PostgresStore)
        store.add_user(User("alice"))
        conn = store._conn()
        row = conn.execute("SELECT current_schema() AS s, current_setting('application_name') AS a").fetchone()
        assert (row["s"], row["a"]) == (schema_of(pg_url), "mfa-test")
    finally:
        store.close()


def test_two_servers_on_one_store_share_the_key_check(pg_url, tmp_path: Path) -> None:
    first = open_store(pg_url, str(tmp_path / "a.key"))
    try:
        with pytest.raises(StoreError, match="not the key of the store postgresql://127.0.0.1:5432/radius_mfa_test"):
            open_store(pg_url, str(tmp_path / "b.key"))
        os.link(tmp_path / "a.key", tmp_path / "c.key")
        open_store(pg_url, str(tmp_path / "c.key")).close()
    finally:
        first.close()

