"""Outputs that appear whole or not at all: a run writes into a staging folder beside its
output and renames it into place when everything, `manifest.json` last, is written.

This is the seed's "transaction: rollback on task failure, groups of tasks as an atomic unit",
done with the filesystem rather than Prefect's transaction API. Prefect's transactions record
and roll back *task results* in its result store; our products are folders of zarr, FITS and
PNG written by many Dask workers on a shared volume, which Prefect never sees. A rename within
one folder is atomic on POSIX filesystems, so readers see either no output, or the old one, or
the complete new one; never a half-written product with a valid header.

- ``begin`` refuses an existing non-empty output unless ``overwrite`` (the old output stays
  untouched until commit), and creates ``.<name>.staging-<run>`` beside it.
- ``commit`` moves an old output aside, renames the staged one into place, then removes the
  old one. Between the two renames no output exists, which is still never a partial one.
- ``rollback`` removes the staging folder: the only thing a run ever deletes apart from the
  old output it was told to replace. A run killed outright (SIGKILL, a deleted pod) leaves the
  hidden staging folder, which nothing mistakes for a product (it has no manifest where readers
  look). Its name carries the flow-run ID: the next run into the same output removes it once
  Prefect says that flow run has ended (:mod:`radps_flows.pipelines.transaction`).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

STAGING_MARK = ".staging-"
MANIFEST_FILE = "manifest.json"
ROLLBACK_ATTEMPTS = 5
REPLACED_MARK = ".replaced-"


class OutputExistsError(FileExistsError):
    """The output already holds something and the run was not told to replace it."""


class StagedOutput:
    """One run's products under construction: ``path`` is where to write them (named as the
    final output), ``final`` where they appear at commit."""

    def __init__(self, final: str | os.PathLike[str], overwrite: bool, run_id: str | None = None):
        self.final = Path(os.path.abspath(final))
        self.overwrite = overwrite
        self._tag = (run_id or uuid.uuid4().hex)[:36]
        self.staging = self.final.parent / f".{self.final.name}{STAGING_MARK}{self._tag}"
        self.path = self.staging / self.final.name

    def begin(self) -> Path:
        check_output_free(self.final, self.overwrite)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.final.parent, os.W_OK):
            raise PermissionError(f"output folder {self.final.parent} is not writable")
        if self.staging.exists():  # the same run retried (Prefect retries keep the run id)
            shutil.rmtree(self.staging)
        self.staging.mkdir()
        return self.path

    def sibling(self, name: str) -> Path:
        """Where to write a file that appears beside the output at commit (a synthesized
        set's truth and manifest)."""
        return self.staging / name

    def manifest_location(self, name: str) -> Path:
        """Where the manifest ``name`` is written: inside the output, or beside it (a
        synthesized set's)."""
        return self.path / name if name == MANIFEST_FILE else self.sibling(name)

    def place(self, manifest_name: str = MANIFEST_FILE) -> None:
        """Products stay in the staging folder until :meth:`commit_manifest` renames it."""

    def current(self, written: str | os.PathLike[str]) -> Path:
        """Where a product written at ``written`` is before the commit: still there."""
        return Path(written)

    def commit_manifest(self, location: Path, document: dict) -> Path:
        """Write the manifest into the staging folder, then rename everything into place."""
        from radps_flows import manifest

        manifest.write(document, location)
        return self.commit()

    @property
    def open(self) -> bool:
        """Whether the staging folder still exists (neither committed nor rolled back)."""
        return self.staging.exists()

    def commit(self) -> Path:
        """Rename the staged output (and its siblings, the output last) into place; returns
        ``final``."""
        entries = [self.final, *(self.final.parent / p.name for p in self._siblings())]
        for final in entries:  # another run may have committed since begin
            check_output_free(final, self.overwrite)
        replaced = []
        for final in entries:
            if final.exists() or final.is_symlink():
                aside = final.with_name(f".{final.name}{REPLACED_MARK}{self._tag}")
                os.rename(final, aside)
                replaced.append(aside)
        for staged in self._siblings():
            os.rename(staged, self.final.parent / staged.name)
        os.rename(self.path, self.final)
        self.staging.rmdir()
        for aside in replaced:
            _remove(aside)
        return self.final

    def _siblings(self) -> list[Path]:
        return sorted(p for p in self.staging.iterdir() if p.name != self.final.name)

    def rollback(self) -> None:
        """Remove the staging folder, again after a moment if it is still there: a failed
        write stops the computation at its first error, while other threads may still be
        finishing theirs into it."""
        for attempt in range(ROLLBACK_ATTEMPTS):
            if not self.staging.exists():
                return
            if attempt:
                time.sleep(0.2 * attempt)
            shutil.rmtree(self.staging, ignore_errors=True)

    def final_path(self, staged: str | os.PathLike[str]) -> Path:
        """Where a file written under ``path`` (or beside it, see ``sibling``) will be once
        committed."""
        staged = Path(os.path.abspath(staged))
        if staged == self.path or self.path in staged.parents:
            return self.final / staged.relative_to(self.path)
        return self.final.parent / staged.relative_to(self.staging)


def check_output_free(final: Path, overwrite: bool) -> None:
    """An existing output is an error naming it, unless it is an empty folder, or `overwrite`
    and it is something a run writes (never a folder of other things a user named by
    mistake: `output: /home/me` with overwrite must not empty a home folder)."""
    if not (final.exists() or final.is_symlink()):
        return
    if final.is_dir() and not final.is_symlink() and not any(final.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"output {final} already exists and is not empty: choose another output, or set "
            "overwrite: true to replace it when this run completes"
        )
    if not _replaceable(final):
        raise OutputExistsError(
            f"output {final} exists and is not a radps output (no {PRODUCT_MARKERS[0]} or "
            f"{PRODUCT_MARKERS[1]} in it): not replacing it even with overwrite: true"
        )


PRODUCT_MARKERS = (MANIFEST_FILE, "zarr.json")
"""A folder holding one of these is a run's output (or a zarr store) that overwrite may
replace."""


def _replaceable(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return path.is_file() and path.suffix == ".json"  # a synthesized set's companions
    return any((path / marker).is_file() for marker in PRODUCT_MARKERS)


def leftover_staging(final: str | os.PathLike[str]) -> list[Path]:
    """Staging folders of runs into ``final`` that never committed or rolled back."""
    final = Path(os.path.abspath(final))
    if not final.parent.is_dir():
        return []
    return sorted(final.parent.glob(f".{final.name}{STAGING_MARK}*"))


def staging_run_id(staging: Path) -> str:
    """The run (flow-run ID) that owns a staging folder."""
    return staging.name.rsplit(STAGING_MARK, 1)[1]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
