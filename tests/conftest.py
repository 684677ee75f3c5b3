import contextlib
import sys
from pathlib import Path

# the helpers module beside the tests
sys.path.insert(0, str(Path(__file__).parent))

import pytest

from pg import KINDS, StoreMaker, fresh_schema, store_schema


@pytest.fixture
def pg_url():
    """The URL of a PostgreSQL store in a schema of this test's own, dropped
    with everything in it when the test ends (see tests/pg.py)."""
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=KINDS)
def store_kind(request) -> str:
    """Each store test runs once on SQLite and once on PostgreSQL."""
    return request.param


@pytest.fixture
def make_store(store_kind, tmp_path, request):
    """Opens stores of this test's kind, all on one database with one key
    (several servers sharing a store); each closed when the test ends."""
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(store_schema()) if store_kind == "postgresql" else None
        maker = StoreMaker(store_kind, tmp_path, pg_url)
        yield maker
        maker.close_all()


@pytest.fixture
def alice_store(make_store):
    """A store holding the user alice (SQLite, then PostgreSQL), behind the
    engine's async adapter with an immediate runner: what the verifier tests
    sign in to."""
    from radius_mfa.model import User
    from radius_mfa.store.asyncstore import AsyncStore, immediate_runner

    sync = make_store()
    sync.add_user(User(name="alice"))
    return AsyncStore(sync, immediate_runner)
