"""The exceptions ragkit raises: one base class, so callers can catch everything ragkit
reports about their input with ``except RagkitError``."""


class RagkitError(Exception):
    """Base class for every error ragkit raises about models, data or settings."""


class ModelNotFoundError(RagkitError):
    """A model id that is neither a local folder, nor in the Hugging Face cache, nor reachable."""


class DeviceNotAvailableError(RagkitError):
    """A device (``cuda``, ``cuda:1``, ``mps``) that this machine does not have."""


class DataError(RagkitError):
    """A collection that is missing, malformed, fails its checksum or cannot be downloaded.

    The message names the file (and line) at fault, what was expected and how to fix it."""
