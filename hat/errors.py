"""Errors that a user caused (bad YAML, bad checkpoint, missing toolkit): printed as one line, exit code 2."""


class HatError(Exception):
    """Base for user-facing errors: the message is the whole story, no traceback needed."""


class ConfigError(HatError):
    """A YAML key, flag or value that cannot be used."""


class CheckpointError(HatError):
    """A checkpoint that is missing, corrupt or does not match the config."""
