"""Development tooling kept out of the installed package.

Local S3 and nginx servers, sample data, the demo and the Docker image: what tests,
benchmarks, `make demo` and tasks.py use, never what a release or a download needs.
"""
