"""Postline: a self-hosted transactional email platform."""

__version__ = "0.1.0"
