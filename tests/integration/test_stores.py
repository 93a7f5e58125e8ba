"""CrosstalkStores: input checks (pure) and every keyword against the real PostgreSQL and Redis
of a reference platform (the session ``platform`` fixture)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from assertionengine import AssertionOperator
from crosstalk.model import TestUser
from crosstalk.stores import IsolationLevel, StoreError, host_of
from CrosstalkStores import CrosstalkStores


# ---------------------------------------------------------------- pure checks
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root:hunter22@db:3306/x", "Postgres alias 'db': URL 'mysql://root:***@db:3306/x' is not"),
        ("", "Postgres alias 'db': URL '' is not a postgresql:// URL"),
    ],
)
def test_bad_postgres_url_is_one_line_without_password(url, expected):
    with pytest.raises(StoreError) as info:
        CrosstalkStores().connect_to_postgres("db", url)
    assert str(info.value).startswith(expected)
    assert "hunter22" not in str(info.value) and "\n" not in str(info.value)


def test_unreachable_postgres_names_alias_and_host_not_password():
    with pytest.raises(StoreError) as info:
        CrosstalkStores().connect_to_postgres("backend", "postgresql://app:s3cretpw@127.0.0.1:1/backend")
    message = str(info.value)
    assert message.startswith("Cannot connect Postgres alias 'backend' to 127.0.0.1:1: ")
    assert "s3cretpw" not in message and "\n" not in message


def test_unreachable_redis_names_alias_and_host():
    with pytest.raises(StoreError, match=r"^Cannot connect Redis alias 'cache' to 127.0.0.1:1: "):
        CrosstalkStores().connect_to_redis("cache", "redis://:pw12345678@127.0.0.1:1/0")


def test_unknown_alias_says_what_to_do():
    with pytest.raises(StoreError, match=r"alias 'x' .*Connect To Postgres first"):
        CrosstalkStores().query("x", "SELECT 1")
    with pytest.raises(StoreError, match=r"No Redis connection with alias 'y' .*Connect To Redis first"):
        CrosstalkStores().list_keys("y")


def test_host_of_hides_credentials():
    assert host_of("postgresql://u:p@db.example:5432/x") == "db.example:5432"


EQ = AssertionOperator["=="]


# ---------------------------------------------------------------- real stores
@pytest.fixture(scope="module")
def stores(platform):
    library = CrosstalkStores()
    library.connect_to_postgres("backend", platform.state["backend_database_url"])
    library.connect_to_redis("cache", platform.redis_url)
    yield library
    library.disconnect_from_all_stores()


@pytest.fixture
def table(stores):
    name = f"store_test_{uuid.uuid4().hex[:8]}"
    stores.query("backend", f"CREATE TABLE {name} (id int, user_id uuid, note text, created_at timestamptz "
                            "DEFAULT now())")
    yield name
    stores.query("backend", f"DROP TABLE {name}")


def test_parameterized_query_returns_dicts(stores, table):
    user_id = str(uuid.uuid4())
    stores.query("backend", f"INSERT INTO {table} (id, user_id, note) VALUES (%s, %s, %s)", 1, user_id,
                 "it's; DROP TABLE x --")
    rows = stores.query("backend", f"SELECT id, note FROM {table} WHERE user_id = %s", user_id)
    assert rows == [{"id": 1, "note": "it's; DROP TABLE x --"}]
    assert stores.get_row_count("backend", f"SELECT * FROM {table}", EQ, 1) == 1
    with pytest.raises(AssertionError,
                       match=rf"Rows of <SELECT \* FROM {table}> on 'backend' is 1, expected == 2"):
        stores.get_row_count("backend", f"SELECT * FROM {table}", EQ, 2)


def test_row_count_of_a_view_narrowed_to_a_user_and_a_thread(stores):
    nobody = TestUser("nobody", "n@x", "pw-123456789", "CANARY-nobody-1", str(uuid.uuid4()))
    assert stores.get_row_count("backend", "threads", user=nobody) == 0
    thread = str(uuid.uuid4())
    with pytest.raises(AssertionError, match=rf"Messages rows of nobody in thread {thread} on 'backend' "
                                             r"is 0, expected >= 1 \(last value seen, polled \d+ times "
                                             r"for 0.2 s\)"):
        stores.get_row_count("backend", "messages", AssertionOperator[">="], 1, user=nobody, thread=thread,
                             timeout=timedelta(milliseconds=200))
    with pytest.raises(StoreError, match="narrow the threads view with user= or thread="):
        stores.get_row_count("backend", "threads")
    with pytest.raises(StoreError, match="'thredz' is neither a view of the profile"):
        stores.get_row_count("backend", "thredz", user=nobody)


def test_rows_should_contain_and_per_user_rows(stores, table):
    alice = TestUser("alice", "a@x", "pw-123456789", "CANARY-alice-1", str(uuid.uuid4()))
    stores.query("backend", f"INSERT INTO {table} (id, user_id, note) VALUES (1, %s, 'a'), (2, %s, 'b')",
                 alice.user_id, alice.user_id)
    row = stores.rows_should_contain("backend", f"SELECT * FROM {table} WHERE id = %s", {"note": "b"}, 2)
    assert row["id"] == 2
    with pytest.raises(AssertionError, match="No row on 'backend' has note=c"):
        stores.rows_should_contain("backend", f"SELECT * FROM {table}", {"note": "c"})
    assert len(stores.get_rows_of_user("backend", table, alice)) == 2
    assert stores.get_row_count("backend", f"SELECT 1 FROM {table} WHERE user_id = %s", EQ, 2,
                                params=[alice.user_id]) == 2
    with pytest.raises(StoreError, match="is not a plain table or column name"):
        stores.get_rows_of_user("backend", "threads; DROP TABLE threads", alice)


def test_transaction_isolation_level_commit_and_rollback(stores, table):
    stores.begin_transaction("backend", IsolationLevel.REPEATABLE_READ)
    level = stores.query("backend", "SHOW transaction_isolation")[0]["transaction_isolation"]
    stores.query("backend", f"INSERT INTO {table} (id) VALUES (1)")
    with pytest.raises(StoreError, match="already open"):
        stores.begin_transaction("backend")
    stores.rollback("backend")
    assert level == "repeatable read"
    stores.get_row_count("backend", f"SELECT * FROM {table}", EQ, 0)
    stores.begin_transaction("backend", IsolationLevel.SERIALIZABLE)
    stores.query("backend", f"INSERT INTO {table} (id) VALUES (2)")
    stores.commit("backend")
    stores.get_row_count("backend", f"SELECT * FROM {table}", EQ, 1)


def test_failed_query_names_alias_and_sql(stores):
    with pytest.raises(StoreError, match=r"Query on 'backend' failed: .*no_such_table.*\(SQL: SELECT"):
        stores.query("backend", "SELECT * FROM no_such_table")


def test_redis_values_by_type_and_scan(stores):
    client = stores.redis_client("cache")
    prefix = f"storetest:{uuid.uuid4().hex[:8]}"
    client.set(f"{prefix}:s", "text")
    client.hset(f"{prefix}:h", mapping={"user_id": "u1"})
    client.rpush(f"{prefix}:l", "a", "b")
    client.sadd(f"{prefix}:set", "y", "x")
    client.zadd(f"{prefix}:z", {"m": 2.0})
    try:
        assert stores.list_keys("cache", f"{prefix}:*") == sorted(
            f"{prefix}:{k}" for k in ("s", "h", "l", "set", "z")
        )
        assert stores.get_redis_value("cache", f"{prefix}:s") == "text"
        assert stores.get_redis_value("cache", f"{prefix}:h") == {"user_id": "u1"}
        assert stores.get_redis_value("cache", f"{prefix}:l") == ["a", "b"]
        assert stores.get_redis_value("cache", f"{prefix}:set") == ["x", "y"]
        assert stores.get_redis_value("cache", f"{prefix}:z") == [["m", 2.0]]
        stores.redis_key_should_exist("cache", f"{prefix}:s")
        stores.redis_key_should_not_exist("cache", f"{prefix}:nothing")
        with pytest.raises(AssertionError, match=r"exists on 'cache' \(type hash\) but should not"):
            stores.redis_key_should_not_exist("cache", f"{prefix}:h")
        with pytest.raises(AssertionError, match="does not exist"):
            stores.get_redis_value("cache", f"{prefix}:nothing")
    finally:
        client.delete(*(f"{prefix}:{k}" for k in ("s", "h", "l", "set", "z")))


def test_fetch_runs_one_statement_on_its_own_connection(platform, table):
    from crosstalk.stores import fetch

    url = platform.state["backend_database_url"]
    fetch("backend", url, f"INSERT INTO {table} (id, note) VALUES (%s, %s)", (7, "100%"))
    assert fetch("backend", url, f"SELECT id, note FROM {table} WHERE note LIKE '100%%'") == [(7, "100%")]
    assert fetch("backend", url, f"SELECT count(*) FROM {table} WHERE id = %(id)s", {"id": 7}) == [(1,)]
    assert fetch("backend", url, f"DELETE FROM {table}") == []
    with pytest.raises(StoreError, match=r"Postgres alias 'backend': URL 'redis://.*' is not a postgresql://"):
        fetch("backend", "redis://localhost:1/0", "SELECT 1")
