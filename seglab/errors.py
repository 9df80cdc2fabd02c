"""User-facing errors: one line that names the culprit and the fix; the CLI exits 2 on them."""


class SeglabError(Exception):
    """Bad input or configuration. The message is shown to the user as it is."""


class DataError(SeglabError):
    """A data set, image or mask is missing, unreadable or inconsistent."""


class ConfigError(SeglabError):
    """A configuration value or command-line flag is invalid."""


class CheckpointError(SeglabError):
    """A file that should be a seglab checkpoint is not one."""
