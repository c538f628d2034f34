"""The test suite: pytest collects it; tests/support.py holds the helpers it shares."""
