"""Makes the repository root importable for tests (tests.* helpers)."""
