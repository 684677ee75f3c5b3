import contextlib
import io
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


# --- the commands, run in process (tests/test_cli*.py define ``config_file``) ----------
@pytest.fixture
def run(config_file, capsys, monkeypatch):
    """run(*words, stdin="") → (exit code, stdout, stderr), ``-c FILE`` first."""

    from radius_mfa.cli import main as cli_main

    def run_(*words: str, stdin: str = "", config: str | None = config_file):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        argv = (["-c", config] if config else []) + list(words)
        code = cli_main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run_


@pytest.fixture
def store(config_file):
    """The same store the commands use, opened directly for setup and checks."""
    from radius_mfa.config import load_config
    from radius_mfa.store import open_store

    config = load_config(config_file)
    s = open_store(config.store, config.store_key_file)
    yield s
    s.close()
