"""Shoal: identity-preserving tracking of many unmarked animals, as services that scale."""

__version__ = "0.1.0"
