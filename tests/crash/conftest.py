"""The crash suite runs Postline as real subprocesses, like the acceptance tests: their
``install`` and ``launch`` fixtures, shared rather than copied."""

from tests.acceptance.conftest import install, launch

__all__ = ["install", "launch"]
