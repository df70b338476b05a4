"""The errors a command reports in one line with exit status 2: bad input, named with its fix."""


class UsageError(ValueError):
    """Bad input from the command line; the message names the problem and the fix, in one line."""


class ConfigError(UsageError):
    """A preset, key or value that is not valid; the message says which and how to fix it."""


class ModelError(UsageError):
    """A model that cannot be used; the message says why and what to do, in one line."""
