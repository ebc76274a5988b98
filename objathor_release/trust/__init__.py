"""Trust: manifest signatures, the pinned-manifest registry and the origin policy a download applies."""
