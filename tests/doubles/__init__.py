"""Doubles of services keyshift cannot reach in tests, driven through the real clients."""
