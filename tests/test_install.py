"""What an installation relies on: the version it reports, the systemd
unit, and files written by admin commands run as root."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest

import radius_mfa
from radius_mfa.cli import main

VERSION_LINE = re.compile(r"^radius-mfa \d+\.\d+\.\d+\S*$")


def test_version_option_prints_the_installed_version_and_exits_0(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert VERSION_LINE.match(out), out
    assert out == f"radius-mfa {metadata.version('radius-mfa')}"


def test_version_option_works_without_a_config_file(tmp_path):
    missing = tmp_path / "absent.yaml"
    command = shutil.which("radius-mfa") or pytest.skip("radius-mfa is not on PATH")
    done = subprocess.run([command, "-c", str(missing), "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert VERSION_LINE.match(done.stdout.strip()), done.stdout
    done = subprocess.run([sys.executable, "-m", "radius_mfa", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert VERSION_LINE.match(done.stdout.strip()), done.stdout


def test_version_falls_back_to_the_source_tree_when_not_installed(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert radius_mfa.version() == radius_mfa.__version__


# --------------------------------------------------------------------------
# The systemd unit
# --------------------------------------------------------------------------

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "radius-mfa.service"
VENV_COMMAND = "/opt/radius-mfa/bin/radius-mfa"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if os.path.exists("/usr/bin/systemd-analyze") else None)


def test_the_unit_runs_the_command_of_the_venv():
    exec_start = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={VENV_COMMAND} -c /etc/radius-mfa/radius-mfa.yaml serve"]
    assert "/usr/local/bin" not in UNIT.read_text()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    """The unit as shipped, but for ExecStart pointing at an executable that
    exists here (verify refuses a missing one)."""
    command = tmp_path / "radius-mfa"
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    unit = tmp_path / "radius-mfa.service"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={VENV_COMMAND} ") == 1
    unit.write_text(text.replace(f"ExecStart={VENV_COMMAND} ", f"ExecStart={command} "))
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)],
                          capture_output=True, text=True, timeout=120)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line]
    assert done.returncode == 0 and ours == [], done.stdout + done.stderr


def test_systemd_analyze_verify_can_fail():
    """The check above means something: verify refuses a unit it cannot run."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    directory = Path(tempfile.mkdtemp())
    try:
        unit = directory / "radius-mfa.service"
        unit.write_text(UNIT.read_text())          # /opt/radius-mfa/bin/radius-mfa is absent here
        if os.path.exists(VENV_COMMAND):
            pytest.skip(f"{VENV_COMMAND} exists on this machine")
        done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 or VENV_COMMAND in done.stdout + done.stderr
    finally:
        shutil.rmtree(directory)


# --------------------------------------------------------------------------
# Files made by admin commands run as root
# --------------------------------------------------------------------------

SERVICE_UID = 4242        # no such user needed: a number stands for radius-mfa
SERVICE_GID = 4343


@pytest.fixture
def service_dirs():
    """A state and a key directory owned by the service user, as the README's
    install steps make /var/lib/radius-mfa and /etc/radius-mfa/keys."""
    top = Path(tempfile.mkdtemp())
    top.chmod(0o755)
    state, keys = top / "state", top / "keys"
    for directory in (state, keys):
        directory.mkdir(mode=0o700)
        os.chown(directory, SERVICE_UID, SERVICE_GID)
    config = top / "radius-mfa.yaml"
    config.write_text(f"""\
store: "sqlite:///{state}/radius-mfa.db"
store_key_file: {keys}/store.key
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "a-long-enough-nas-secret"
""")
    config.chmod(0o600)
    yield config, state / "radius-mfa.db", keys / "store.key"
    shutil.rmtree(top)


def _as_service_user(action) -> int:
    """Run ``action`` in a child with the service user's uid and gid only:
    0 when it worked."""
    pid = os.fork()
    if pid == 0:                      # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(SERVICE_GID)
            os.setuid(SERVICE_UID)
            action()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            print(f"as the service user: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: what root's admin commands leave behind")
def test_a_store_and_key_made_by_root_belong_to_the_service_user(service_dirs, capsys):
    config, database, key = service_dirs
    assert main(["-c", str(config), "user", "add", "alice"]) == 0
    for made in (database, key):
        info = made.stat()
        assert (info.st_uid, info.st_gid) == (SERVICE_UID, SERVICE_GID), made
        assert stat.S_IMODE(info.st_mode) == 0o600, made

    from radius_mfa.store import open_store

    def read_as_service():
        store = open_store(f"sqlite:///{database}", str(key))
        try:
            assert [user.name for user in store.list_users()] == ["alice"]
        finally:
            store.close()

    assert _as_service_user(read_as_service) == 0, capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_files_root_makes_in_its_own_directories_stay_roots(tmp_path):
    from radius_mfa.secretbox import SecretBox

    SecretBox.from_file(str(tmp_path / "keys" / "store.key"))
    info = (tmp_path / "keys" / "store.key").stat()
    assert (info.st_uid, info.st_gid) == (0, 0)


# --------------------------------------------------------------------------
# The store key's creation is announced, once
# --------------------------------------------------------------------------


def test_making_the_store_key_says_where_it_is_and_to_back_it_up_once(tmp_path, capsys):
    from radius_mfa.secretbox import SecretBox

    path = tmp_path / "store.key"
    first = SecretBox.from_file(str(path))
    err = capsys.readouterr().err
    assert err == (f"radius-mfa: made a new store key in {path}: back it up, apart from the store's "
                   "backups; without it the token secrets in the store cannot be read\n")
    again = SecretBox.from_file(str(path))
    assert capsys.readouterr().err == ""
    assert again.check_value == first.check_value
    assert path.read_text().strip() not in err


def test_the_first_admin_command_announces_the_new_key(tmp_path):
    config = tmp_path / "radius-mfa.yaml"
    config.write_text('store: "sqlite:///radius-mfa.db"\nclients: []\n')
    command = shutil.which("radius-mfa") or pytest.skip("radius-mfa is not on PATH")
    first = subprocess.run([command, "-c", str(config), "user", "list"],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"made a new store key in {tmp_path / 'store.key'}: back it up" in first.stderr
    second = subprocess.run([command, "-c", str(config), "user", "list"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "store key" not in second.stderr


def test_every_package_of_the_tree_is_installed_by_setup_cfg():
    """A package missing from setup.cfg works from the checkout and breaks the
    installed server (ModuleNotFoundError at start)."""
    import configparser

    root = Path(__file__).resolve().parent.parent
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    listed = {line.split("#")[0].strip() for line in config["options"]["packages"].splitlines()} - {""}
    for top in ("radius_mfa", "radius_mfa_authenticator"):
        for init in (root / top).rglob("__init__.py"):
            package = ".".join(init.parent.relative_to(root).parts)
            assert package in listed, f"{package} is not in setup.cfg's packages"
