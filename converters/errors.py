"""What the converter tells the user: an error they can fix, or a warning about the result."""

from edgellm.errors import EdgeLLMError


class ConvertError(EdgeLLMError, ValueError):
    """Bad input to `edgellm convert` (source, output path or option); the message is one line.

    Raised before anything is written, or after the partial output has been removed. It is an
    EdgeLLMError, so the CLI prints it and exits with status 2 like every other user error.
    """


class LossySourceWarning(UserWarning):
    """The source GGUF is already quantized: requantizing cannot bring back what was lost."""
