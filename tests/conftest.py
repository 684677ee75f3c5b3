import sys
from pathlib import Path

# the helpers module beside the tests
sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture
def alice_store(tmp_path):
    """A SQLite store holding the user alice, behind the engine's async
    adapter with an immediate runner: what the verifier tests sign in to."""
    from helpers import open_sqlite
    from radius_mfa.model import User
    from radius_mfa.store.asyncstore import AsyncStore, immediate_runner

    sync = open_sqlite(tmp_path / "alice.db")
    sync.add_user(User(name="alice"))
    yield AsyncStore(sync, immediate_runner)
    sync.close()
