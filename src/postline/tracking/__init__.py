"""Opt-in open and click tracking and one-click unsubscribe (docs/API.md, "Tracking")."""
