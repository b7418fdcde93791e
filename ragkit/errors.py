"""The exceptions ragkit raises: one base class, so callers can catch everything ragkit
reports about their input with ``except RagkitError``.

Errors about a value the caller passed (an option, a parameter) are also ``ValueError`` s,
so code written against the standard exception keeps working.
"""


class RagkitError(Exception):
    """Base class for every error ragkit raises about models, data, settings or caches."""


class ConfigError(RagkitError, ValueError):
    """An option or parameter with a value ragkit cannot use; the message names it and says
    what is expected."""


class ModelNotFoundError(RagkitError):
    """A model id that is neither a local folder, nor in the Hugging Face cache, nor reachable."""


class DeviceNotAvailableError(RagkitError):
    """A device (``cuda``, ``cuda:1``, ``mps``) that this machine does not have, or a device
    name ragkit does not know."""


class DataError(RagkitError, ValueError):
    """A collection that is missing, malformed, fails its checksum or cannot be downloaded.

    The message names the file (and line) at fault, what was expected and how to fix it."""


class CacheError(RagkitError):
    """A cache file that cannot be read or repaired; the message names the file and the fix
    (``ragkit cache clear``, or deleting that path)."""
