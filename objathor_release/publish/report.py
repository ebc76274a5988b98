"""What an upload did: one :class:`FileResult` per file, gathered in an :class:`UploadReport`
that renders the table and the summary line the command line prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from objathor_release.settings import format_size, format_table

__all__ = ["FileResult", "UploadReport"]


@dataclass
class FileResult:
    """What happened to one file: ``status`` is uploaded, resumed, skipped or dry-run."""

    name: str
    key: str
    size: int
    sha256: str
    etag: str
    parts: int
    part_size: int
    status: str
    parts_uploaded: int = 0
    parts_resumed: int = 0
    multipart: bool = True
    why: str = ""  # how the part layout was chosen (shown by a dry run)
    concurrency: str = ""  # the parts in flight it may get (shown by a dry run)

    @property
    def requests(self) -> int:
        """Requests a new upload of this file takes: HEAD check, create + parts + complete
        (or one PUT), HEAD verify."""
        return 2 + (self.parts + 2 if self.multipart else 1)


@dataclass
class UploadReport:
    """Every file's result, the number of UploadPart calls made, and a printable table."""

    bucket: str
    prefix: str
    endpoint_url: str
    results: list[FileResult] = field(default_factory=list)
    part_uploads: int = 0
    put_uploads: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    peak_connections: int = 0  # the most requests that were in flight at once
    plan: str = ""  # a dry run's line on how the connections are counted and shared

    def etags(self) -> dict[str, str]:
        """name -> ETag of every object, for :func:`verify_remote`."""
        return {r.name: r.etag for r in self.results if r.etag}

    def table(self) -> str:
        head: tuple[str, ...]
        rows: list[tuple[str, ...]]
        if self.dry_run:
            head = ("file", "size", "part size", "parts", "concurrency", "requests", "why")
            rows = [(r.name, format_size(r.size), format_size(r.part_size) if r.multipart else "-",
                     str(r.parts), r.concurrency, str(r.requests), r.why) for r in self.results]
        else:
            head = ("file", "size", "parts", "status", "etag")
            rows = [(r.name, format_size(r.size), f"{r.parts} x {format_size(r.part_size)}", r.status, r.etag)
                    for r in self.results]
        table = format_table(head, rows)
        return f"{table}\n{self.plan}" if self.dry_run and self.plan else table

    def summary(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        if self.dry_run:
            total = sum(r.size for r in self.results)
            requests = sum(r.requests for r in self.results)
            return (f"dry run: would upload {len(self.results)} files ({format_size(total)}) to {where} "
                    f"at {self.endpoint_url} in about {requests} requests (HEAD checks included); "
                    "the bucket was not contacted")
        counts = {s: sum(r.status == s for r in self.results) for s in ("uploaded", "resumed", "skipped")}
        rate = self.bytes_sent / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (f"{where}: {counts['uploaded']} uploaded, {counts['resumed']} resumed, {counts['skipped']} "
                f"skipped; {format_size(self.bytes_sent)} sent in {self.seconds:.1f} s ({rate:.1f} MB/s), "
                f"{self.part_uploads} part uploads; every object verified (the sha256 of the local bytes "
                "against manifest.json, then the remote size, ETag and sha256 metadata)")
