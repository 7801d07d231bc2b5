"""Errors about input data that a user must fix; each message names the file, key or clip."""


class CorpusError(ValueError):
    """A corpus, its annotations or a manifest cannot be used as given."""
