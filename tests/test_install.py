"""What an installation relies on: the version it reports, the systemd
unit, and files written by admin commands run as root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata

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
