"""Outputs on an object store that appear whole or not at all, without a rename.

:mod:`radps_flows.staging` commits a local output by renaming a folder; S3 has no rename (a
"move" is a copy and a delete per object). Here the commit is the manifest: readers trust an
output only through its ``manifest.json`` (:func:`radps_flows.manifest.verify`), and the
manifest is the last object a run writes, with a conditional PUT (``If-None-Match: *``), so two
runs can never both commit one output.

- ``begin`` claims the output: a small ``.<name>.radps-claim.json`` object beside it, written
  with the same conditional PUT and naming the flow run. A second run into the same output
  fails at once with the owner's name (:class:`OutputClaimedError`); once Prefect says that
  run has ended, the next run clears what it left (:meth:`ObjectOutput.clear_abandoned`).
- A new output (an empty prefix) is written in place: no copy at all.
- Replacing a committed output (``overwrite``) writes beside it, under
  ``.<name>.staging-<run>/<name>``, and leaves the old output whole until commit. Then the old
  manifest goes first (the old output is no longer valid), the old objects next, and the new
  ones are copied into place on the server (S3 CopyObject: nothing passes through the run)
  before the new manifest. Between those steps there is no valid output, never a partial one;
  the price of replacing is one server-side copy of the new products.
- ``rollback`` removes what the run wrote and its claim; an old output it was replacing stays.

Keys are laid out so that no key equals another key's prefix (``out`` beside ``out/x``):
SeaweedFS and MinIO are filers underneath and refuse or lose such keys.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from radps_flows import locations
from radps_flows.staging import PRODUCT_MARKERS, STAGING_MARK, OutputExistsError

CLAIM_MARK = ".radps-claim.json"
MANIFEST_NAME = "manifest.json"


class OutputClaimedError(OutputExistsError):
    """Another run is writing the output (or was, and was killed)."""

    def __init__(self, location: str, run_id: str):
        super().__init__(
            f"output {location} is being written by flow run {run_id}: choose another output, "
            "or wait for that run to end"
        )
        self.run_id = run_id


class ObjectOutput:
    """One run's products under construction on an object store: ``path`` is where to write
    them (named as the final output), ``final`` where they appear at commit."""

    def __init__(self, final: str, overwrite: bool, run_id: str | None = None):
        import uuid

        self.final = locations.absolute(final)
        self.overwrite = overwrite
        self.run_id = run_id or uuid.uuid4().hex
        self._tag = self.run_id[:36]
        self.replacing = False
        self.staging = locations.join(
            locations.parent(self.final), f".{locations.name(self.final)}{STAGING_MARK}{self._tag}"
        )
        self.path = self.final
        # beside the output, not in it: zarr refuses to create a store in a non-empty prefix
        self._claim = locations.join(
            locations.parent(self.final), f".{locations.name(self.final)}{CLAIM_MARK}"
        )

    # -- begin ----------------------------------------------------------------------------

    def begin(self) -> str:
        fs = locations.filesystem()
        with locations.translated(self.final, "prepare the output"):
            names = self._names_below(self.final)
            owner = self._owner() if fs.exists(locations.key_of(self._claim)) else None
            if owner == self.run_id:  # the same run retried (Prefect retries keep the run id)
                self.clear_abandoned(self.run_id)
                names, owner = self._names_below(self.final), None
            if owner is not None:
                raise OutputClaimedError(self.final, owner)
            if names:
                if not self.overwrite:
                    raise OutputExistsError(
                        f"output {self.final} already exists: choose another output, or set "
                        "overwrite: true to replace it when this run completes"
                    )
                if not names & set(PRODUCT_MARKERS):
                    raise OutputExistsError(
                        f"output {self.final} exists and is not a radps output (no "
                        f"{' or '.join(PRODUCT_MARKERS)} in it): not replacing it even with "
                        "overwrite: true"
                    )
                self.replacing = True
            self._write_claim(fs)
            if self.replacing:
                self.path = locations.join(self.staging, locations.name(self.final))
            if locations.objects(self.staging):  # this run's, from a try before this one
                fs.rm(locations.key_of(self.staging), recursive=True)
        return self.path

    def _names_below(self, prefix: str) -> set[str]:
        """The first path component of every object below ``prefix``."""
        key = locations.key_of(prefix)
        try:
            keys = locations.objects(prefix)
        except FileNotFoundError as exc:
            if "bucket" in str(exc):
                raise
            return set()
        return {k[len(key) + 1 :].split("/", 1)[0] for k in keys if k.startswith(key + "/")}

    def _owner(self) -> str | None:
        try:
            claim = json.loads(locations.read_bytes(self._claim))
        except (OSError, ValueError):
            return "unknown"
        return str(claim.get("flow_run_id") or "unknown")

    def _write_claim(self, fs: Any) -> None:
        claim = {"flow_run_id": self.run_id, "since": datetime.now(UTC).isoformat()}
        try:
            _create(fs, self._claim, json.dumps(claim).encode())
        except FileExistsError:  # another run claimed it between our listing and now
            raise OutputClaimedError(self.final, self._owner() or "unknown") from None

    # -- writing --------------------------------------------------------------------------

    def sibling(self, name: str) -> str:
        """Where to write a file that appears beside the output at commit (a synthesized
        set's truth): staged, like a replacement, and copied into place by :meth:`place`."""
        return locations.join(self.staging, name)

    def manifest_location(self, name: str) -> str:
        """Where the manifest ``name`` goes: inside the output, or beside it (a synthesized
        set's)."""
        folder = self.final if name == MANIFEST_NAME else locations.parent(self.final)
        return locations.join(folder, name)

    def current(self, written: str) -> str:
        """Where a product written at ``written`` is once :meth:`place` has run."""
        return self.final_path(written)

    def final_path(self, staged: str) -> str:
        staged = str(staged)
        if self.replacing and (staged == self.path or staged.startswith(self.path + "/")):
            return self.final + staged[len(self.path) :]
        if staged.startswith(self.staging + "/"):
            return locations.parent(self.final) + staged[len(self.staging) :]
        return staged

    # -- commit ---------------------------------------------------------------------------

    def place(self, manifest_name: str = MANIFEST_NAME) -> None:
        """Put the products where they belong before their manifest is written. A new
        output is already there; a replaced one loses its manifest, then its objects, and
        the new ones are copied into place. Companions beside the output (see
        :meth:`sibling`) are copied beside it, refused where something is there already
        unless ``overwrite``."""
        fs = locations.filesystem()
        manifest = locations.key_of(self.manifest_location(manifest_name))
        staging = locations.key_of(self.staging)
        inside = locations.key_of(self.path) + "/" if self.replacing else None
        parent = locations.key_of(locations.parent(self.final))
        with locations.translated(self.final, "put the products in place"):
            staged = sorted(locations.objects(self.staging))
            companions = [k for k in staged if not (inside and k.startswith(inside))]
            beside = [parent + k[len(staging) :] for k in companions]
            for target in [*beside, manifest]:
                if not self.overwrite and fs.exists(target):
                    raise OutputExistsError(
                        f"s3://{target} already exists: choose another output, or set "
                        "overwrite: true to replace it when this run completes"
                    )
            if self.replacing:
                if fs.exists(manifest):
                    fs.rm_file(manifest)
                for name in self._names_below(self.final):
                    fs.rm(locations.key_of(locations.join(self.final, name)), recursive=True)
            moved = [k for k in staged if k not in companions]
            targets = [locations.key_of(self.final) + k[len(inside or "") - 1 :] for k in moved]
            targets += beside
            if staged:
                fs.copy(moved + companions, targets)
                fs.rm(staging, recursive=True)

    def commit_manifest(self, location: str, document: dict[str, Any]) -> str:
        """Write the manifest, the commit itself, then drop the claim; returns ``final``."""
        fs = locations.filesystem()
        content = (json.dumps(document, indent=1) + "\n").encode()
        with locations.translated(location, "write the manifest"):
            try:
                _create(fs, location, content)
            except FileExistsError:
                raise OutputExistsError(
                    f"output {self.final} was committed by another run meanwhile"
                ) from None
            fs.rm_file(locations.key_of(self._claim))
        return self.final

    def rollback(self) -> None:
        """Remove what this run wrote and its claim (an old output it was replacing stays,
        unless :meth:`place` had begun removing it: then nothing valid is left)."""
        fs = locations.filesystem()
        try:
            if locations.objects(self.staging):
                fs.rm(locations.key_of(self.staging), recursive=True)
            if not self.replacing and self._owner() == self.run_id:
                for name in self._names_below(self.final) - {MANIFEST_NAME}:
                    fs.rm(locations.key_of(locations.join(self.final, name)), recursive=True)
            if self._owner() == self.run_id:
                fs.rm_file(locations.key_of(self._claim))
        except OSError as exc:  # the store is gone: report the failure that caused the rollback
            print(f"note: could not remove what this run wrote to {self.final}: {exc}")

    @property
    def open(self) -> bool:
        """Whether this run still holds the output (has neither committed nor rolled back)."""
        return self._owner() == self.run_id

    def clear_abandoned(self, run_id: str) -> None:
        """Remove what run ``run_id``, which Prefect says has ended, left: its claim, its
        staging prefix, and its partial objects when the output was never committed."""
        fs = locations.filesystem()
        with locations.translated(self.final, "clear what an ended run left"):
            names = self._names_below(self.final)
            if MANIFEST_NAME not in names:
                for name in names:
                    fs.rm(locations.key_of(locations.join(self.final, name)), recursive=True)
            staging = locations.join(
                locations.parent(self.final),
                f".{locations.name(self.final)}{STAGING_MARK}{run_id[:36]}",
            )
            if locations.objects(staging):
                fs.rm(locations.key_of(staging), recursive=True)
            if fs.exists(locations.key_of(self._claim)):
                fs.rm_file(locations.key_of(self._claim))


def _create(fs: Any, location: str, content: bytes) -> None:
    """PUT ``content`` unless an object is already there (S3's ``If-None-Match: *``); a
    refused write is a FileExistsError whatever the store says (SeaweedFS answers
    PreconditionFailed without naming the condition, which s3fs turns into an OSError)."""
    try:
        fs.pipe_file(locations.key_of(location), content, mode="create")
    except FileExistsError:
        raise
    except OSError as exc:
        if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
            raise FileExistsError(location) from None
        raise
