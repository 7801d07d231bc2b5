"""Reading pickles from a corpus download without ever running code from them.

A pickle can name any importable callable and call it while loading. Corpus annotations
(ChaLearn ships Python 2 pickles) only need builtin containers and scalars, so the loader
refuses every global: a pickle that asks for one is rejected before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from data_modules.errors import CorpusError


class UnsafePickleError(CorpusError):
    """A pickle wanted to import or call something; it was not loaded."""


class _ContainersOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"it references {module}.{name}")


def load_pickle(path: Path, *, encoding: str = "latin1"):
    """Load `path` allowing only dict, list, tuple, set, str, bytes, numbers, bool and None.

    encoding="latin1" decodes Python 2 byte strings to str losslessly (ChaLearn's pickles).
    Raises CorpusError naming the file when it is unreadable, not a pickle, or unsafe.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return _ContainersOnly(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(
            f"{path}: refused to load an unsafe pickle ({e}); only builtin containers and "
            "scalars are allowed") from None
    except Exception as e:  # truncated or not a pickle: every error type is possible
        raise CorpusError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
