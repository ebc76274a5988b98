"""Build: turn an asset tree into release artifacts (annotations, tars, manifest).

- ``annotations`` merges every asset's annotation into annotations.json.gz;
  ``asset_reader`` finds and reads one asset strictly; ``validation`` is the
  fast JSON-schema check they share with the manifest.
- ``tarball`` builds a reproducible tar (``build_tar``) from ``tarwriter``
  (the walk and the writer thread), ``excludes`` (GNU ``--exclude`` matching)
  and ``epoch`` (SOURCE_DATE_EPOCH); ``tarscan`` reads any tar back.
- ``tarformat`` is the one tar header codec: the writer, the scanner and the
  download's extractor all decode and encode headers through it.
- ``manifest`` writes and verifies manifest.json and SHA256SUMS; ``inputs``
  lists the files each artifact is built from.

Imports no other folder (publish, fetch, trust, pipeline, cli).
"""
