"""Helpers that start the real processes for integration tests."""
