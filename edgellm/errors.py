"""Errors a user can fix. The CLI prints their one-line message and exits with status 2."""


class EdgeLLMError(Exception):
    """Bad input: a file, an argument or a setting; the message says what and where."""


class ModelNotFoundError(EdgeLLMError):
    pass
