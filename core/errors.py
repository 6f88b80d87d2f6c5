"""User-facing errors: each message says what was wrong, where, and what to do.

Core raises these; pages show ``st.error(str(e))`` and the CLI prints the message and exits non-zero.
Anything else reaching a user is a bug.
"""


class GroundworkError(Exception):
    """Base class for errors whose message is meant for the user."""


class ConfigError(GroundworkError):
    """A setting has a value that cannot work."""


class IngestError(GroundworkError):
    """A file or upload could not be turned into documents."""


class VectorStoreError(GroundworkError):
    """The vector store is unreachable, locked, or does not match the embedding model."""


class StoreLockedError(VectorStoreError):
    """The embedded vector store folder is held by another process."""


class ModelMismatchError(VectorStoreError):
    """The collection was built with a different embedding model than the one configured."""


class EmbeddingError(GroundworkError):
    """The embedding model could not be loaded."""


class NotFoundError(GroundworkError):
    """A record that was asked for does not exist."""


class ValidationError(GroundworkError):
    """User input (a prompt, a form value, an export option) is not acceptable."""


class RunStopped(GroundworkError):
    """A generation run must stop now (quota gone, budget spent, cancelled); ``reason`` is stored on the run."""


class DataDirReadOnlyError(GroundworkError):
    """The data dir (or its database or vector store) cannot be written by the user running Groundwork."""
