"""Build: turn an asset tree into release artifacts (annotations, tars, manifest).

Imports neither publish nor fetch.
"""
