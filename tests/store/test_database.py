"""Driver errors become one-line project errors at the store boundary, and never show a password."""

from __future__ import annotations

import pytest

from pao_orchestrator.errors import InvalidArgument, StoreUnavailable
from pao_orchestrator.store.database import create_pool, redact


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "mysql://user:s3cret@db/x",
        "postgresql://user:s3cret@db:abc/x",
        "postgresql://user:s3cret@[::1/x",
        "postgresql://user:s3cret@127.0.0.1:99999/x",
        "postgresql://user:s3cret@127.0.0.1/x?sslmode=bogus",
    ],
)
async def test_a_url_that_is_not_a_postgres_url_is_an_invalid_argument(url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await create_pool(url)
    message = str(caught.value)
    assert caught.value.field == "DATABASE_URL"
    assert "is not a Postgres URL" in message and "\n" not in message
    assert "s3cret" not in message
    assert "postgresql://user:password@host:5432/database" in message  # says what to write instead


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:s3cret@127.0.0.1:1/x",  # nothing listens on port 1
        "postgresql://postgres:s3cret@nosuchhost.invalid/x",
    ],
)
async def test_an_unreachable_postgres_is_store_unavailable_in_one_line(url: str) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await create_pool(url)
    message = str(caught.value)
    assert message.startswith("cannot connect to Postgres at postgresql://postgres:***@")
    assert "\n" not in message and "s3cret" not in message


async def test_a_missing_database_names_it(pg_dsn: str) -> None:
    from tests.conftest import with_database

    with pytest.raises(StoreUnavailable, match='database "pao_no_such_db" does not exist'):
        await create_pool(with_database(pg_dsn, "pao_no_such_db"))


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:p%40ss@h:5/d?sslmode=require") == "postgresql://u:***@h:5/d?sslmode=require"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact("postgresql://postgres:@/pao?host=/tmp/x") == "postgresql://postgres:@/pao?host=/tmp/x"
    assert redact("notaurl") == "notaurl"
