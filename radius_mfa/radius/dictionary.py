"""The RADIUS dictionary shipped with radius-mfa, loaded once per process.

The dictionary files live in the ``radius_mfa.dictionaries`` package (the
top-level ``dictionaries/`` directory of the source tree) so that they are
installed with the code and found without any configured path.
"""

from __future__ import annotations

import functools
import importlib.resources

from pyrad.dictionary import Dictionary

DICTIONARY_PACKAGE = "radius_mfa.dictionaries"
MAIN_FILE = "dictionary"


@functools.cache
def load_dictionary() -> Dictionary:
    """Return the parsed main dictionary (with everything it $INCLUDEs).

    Cached: parsing costs milliseconds and every packet needs the result.
    pyrad resolves the relative ``$INCLUDE`` lines against the directory of
    the file it is given, so it needs a real path (``as_file``); the whole
    parse happens inside the context.
    """
    main = importlib.resources.files(DICTIONARY_PACKAGE).joinpath(MAIN_FILE)
    with importlib.resources.as_file(main) as path:
        return Dictionary(str(path))
