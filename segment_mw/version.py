"""The package version, kept in one place for packaging and context.library."""

__version__ = "0.1.0"
