"""Helpers shared by the tests: hostile servers and proxies, fixtures (loaded as plugins) and builders."""
