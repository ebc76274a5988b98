"""Fetch: download a published version and extract it safely.

Never imports publish.
"""
