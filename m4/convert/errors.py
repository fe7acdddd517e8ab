"""Errors of the converters."""


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message says why and names the key."""
