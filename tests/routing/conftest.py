"""Fake upstreams and gateways live in tests/conftest.py, shared with the cache tests."""
