"""The parsers of untrusted input under a short coverage-guided fuzzing run.

Each target of fuzz/targets.py (the packet decoder, the config loader, the
token and user importers) runs a few seconds under atheris from its seed
corpus; every input that once crashed a target (fuzz/regressions/) is
replayed. Only the documented errors may come out. The long runs are in
fuzz/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402

SECONDS = 4


@pytest.mark.parametrize("name", targets.NAMES)
def test_a_fuzzed_input_gets_only_a_documented_error(name, tmp_path):
    pytest.importorskip("atheris", reason="atheris is in the test extras: pip install -e '.[test]'")
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), name, f"-max_total_time={SECONDS}",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=SECONDS + 60, cwd=tmp_path)
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-")))
    assert proc.returncode == 0 and not crashes, (
        f"{name}: a fuzzed input escaped with an undocumented error ({crashes}):\n{proc.stderr[-6000:]}")
    assert "Done " in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("name", targets.NAMES)
def test_inputs_that_once_crashed_get_only_a_documented_error(name):
    inputs = sorted(targets.regressions_dir(name).iterdir()) if targets.regressions_dir(name).exists() else []
    crashes = targets.replay(name, inputs)
    assert not crashes, "\n".join(f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}" for path, exc in crashes)


@pytest.mark.parametrize("name", targets.NAMES)
def test_every_seed_is_a_valid_input_of_its_target(name):
    seeds = sorted(targets.corpus_dir(name).iterdir())
    assert seeds and not targets.replay(name, seeds)
