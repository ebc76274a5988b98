"""The S3 API, as both sides of a release use it.

:mod:`.target` works out the endpoint, bucket and credentials (flags, environment, profiles,
rclone remotes) and hides the secrets; :mod:`.presign` turns ``s3://BUCKET/KEY`` into a
short-lived signed GET URL for the download engine, one per request. The publish side builds
its upload client from the same target. This folder imports no other folder of the package,
only its shared modules (errors, settings, fsutil, retry, _version), so ``publish/`` and
``fetch/`` can both import it without importing each other.
"""
