"""Publish: put a built release on an S3 API endpoint (R2) and check what is there.

Never imports fetch.
"""
