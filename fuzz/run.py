"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    python3 fuzz/run.py TARGET [libFuzzer options] [CORPUS_DIR ...]

TARGET is one of codec, config, tokens, users (see fuzz/targets.py). With no
directory given, the target's seed corpus (fuzz/corpus/TARGET) is read and a
scratch copy of it grows with what the run finds, so the committed seeds stay
as they are. A crash stops the run with the traceback and writes the input
to ``crash-<sha1>`` in the current directory (``-artifact_prefix=DIR/`` to
put it elsewhere); exit status 0 means no crash. Useful libFuzzer options:
``-max_total_time=SECONDS``, ``-runs=N``, ``-max_len=BYTES``, ``-timeout=S``
(one input slower than that is reported as a hang), ``-jobs=N -workers=N``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Everything the targets import is instrumented: our parsers and the
# libraries under them (pyrad, PyYAML, python-pskc, csv handling).
with atheris.instrument_imports(include=["radius_mfa", "pyrad", "yaml", "pskc", "targets"]):
    import targets
    from radius_mfa import config, tokenimport, userimport  # noqa: F401
    from radius_mfa.radius import codec  # noqa: F401

MAX_LEN = {"codec": 4200, "config": 8192, "tokens": 16384, "users": 8192}


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] not in targets.TARGETS:
        print(__doc__, file=sys.stderr)
        return 2
    name, options = args[0], args[1:]
    target = targets.TARGETS[name]
    if not any(not option.startswith("-") for option in options):
        grown = Path(tempfile.mkdtemp(prefix=f"radius-mfa-corpus-{name}-"))
        for seed in targets.corpus_dir(name).iterdir():
            shutil.copy(seed, grown)
        options.append(str(grown))
    if not any(option.startswith("-max_len=") for option in options):
        options.append(f"-max_len={MAX_LEN[name]}")
    if not any(option.startswith("-timeout=") for option in options):
        options.append("-timeout=30")
    atheris.Setup([sys.argv[0], *options], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
