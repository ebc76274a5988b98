"""invoke tasks: the same steps as the Makefile, wired to the package. `invoke --list` shows them.

Every task runs ``python -m objathor_release`` with the interpreter invoke runs
under, so the tasks and the Make targets call the same package code.
"""

from __future__ import annotations

import shlex
import sys

from invoke import Context, task

CLI = f"{shlex.quote(sys.executable)} -m objathor_release"


def _run(c: Context, *words: object) -> None:
    """Run the CLI with the given words; empty and None words are dropped."""
    argv = [str(w) for w in words if w not in (None, "", False)]
    c.run(f"{CLI} {shlex.join(argv)}", pty=sys.stdout.isatty())


@task(help={
    "save_dir": "directory of optimized assets, one folder (or .tar) per uid",
    "output_file": "where to write annotations.json.gz",
    "skip_invalid": "leave invalid assets out instead of failing",
    "report": "write a JSON report of every problem to this file",
})
def prepare_annotations(c: Context, save_dir: str, output_file: str, skip_invalid: bool = False,
                        report: str = "") -> None:
    """Validate and merge every asset's annotations into annotations.json.gz."""
    _run(c, "prepare-annotations", "--save-dir", save_dir, "--output-file", output_file,
         "--skip-invalid" if skip_invalid else None, *(["--report", report] if report else []))
