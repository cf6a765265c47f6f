"""Outputs appear whole or not at all (issue 12): staging, commit by rename, rollback, the
manifest and the readers that check it; on a real filesystem."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radps_flows import manifest, provenance
from radps_flows.staging import OutputExistsError, StagedOutput, leftover_staging


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _commit_with_manifest(staged: StagedOutput, names: list[str]) -> Path:
    products = [manifest.Product(n, staged.path / n, "file") for n in names]
    document = manifest.build(
        pipeline="test",
        parameters={"x": 1},
        products=products,
        root=staged.path,
        inputs={},
        started=datetime.now(UTC),
        flow_run_id="00000000-0000-0000-0000-000000000000",
        run=provenance.of_this_run({}),
    )
    manifest.write(document, staged.path / manifest.MANIFEST_NAME)
    return staged.commit()


def test_nothing_appears_until_commit_then_everything(tmp_path):
    final = tmp_path / "out"
    staged = StagedOutput(final, overwrite=False, run_id="run1")
    folder = staged.begin()
    _write(folder, {"image.fits": b"x" * 100, "gains.zarr/zarr.json": b"{}"})
    assert not final.exists()
    assert leftover_staging(final) == [staged.staging]
    _commit_with_manifest(staged, ["image.fits", "gains.zarr"])
    assert sorted(p.name for p in final.iterdir()) == ["gains.zarr", "image.fits", "manifest.json"]
    assert leftover_staging(final) == []
    entry = manifest.verify(final / "image.fits")
    assert entry["size"] == 100 and len(entry["sha256"]) == 64
    assert manifest.verify(final / "gains.zarr")["files"] == 1


def test_rollback_removes_only_the_staging_folder(tmp_path):
    final = tmp_path / "out"
    neighbour = tmp_path / "other"
    neighbour.mkdir()
    staged = StagedOutput(final, overwrite=False)
    _write(staged.begin(), {"image.fits": b"partial"})
    staged.rollback()
    assert list(tmp_path.iterdir()) == [neighbour]


def test_an_existing_output_is_an_error_unless_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    StagedOutput(final, overwrite=False).begin()  # an empty folder is free
    (final / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=f"output {final} already exists and is not empty"):
        StagedOutput(final, overwrite=False).begin()


def test_overwrite_replaces_only_at_commit_and_only_a_product(tmp_path):
    final = tmp_path / "out"
    first = StagedOutput(final, overwrite=False)
    _write(first.begin(), {"image.fits": b"old"})
    _commit_with_manifest(first, ["image.fits"])
    second = StagedOutput(final, overwrite=True)
    _write(second.begin(), {"image.fits": b"new"})
    assert (final / "image.fits").read_bytes() == b"old"  # a failure now loses nothing
    _commit_with_manifest(second, ["image.fits"])
    assert (final / "image.fits").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside
    home = tmp_path / "home"
    _write(home, {"thesis.tex": b"years of work"})
    with pytest.raises(OutputExistsError, match="not a radps output"):
        StagedOutput(home, overwrite=True).begin()
    assert (home / "thesis.tex").read_bytes() == b"years of work"


def test_a_failed_overwrite_keeps_the_old_output(tmp_path):
    final = tmp_path / "out"
    first = StagedOutput(final, overwrite=False)
    _write(first.begin(), {"image.fits": b"old"})
    _commit_with_manifest(first, ["image.fits"])
    second = StagedOutput(final, overwrite=True)
    _write(second.begin(), {"image.fits": b"half"})
    second.rollback()
    assert (final / "image.fits").read_bytes() == b"old"
    manifest.verify(final / "image.fits")


def test_a_store_and_its_siblings_commit_together(tmp_path):
    final = tmp_path / "sky.ps.zarr"
    staged = StagedOutput(final, overwrite=False)
    _write(staged.begin(), {"zarr.json": b"{}"})
    staged.sibling("sky.truth.json").write_text("{}")
    assert staged.final_path(staged.sibling("sky.truth.json")) == tmp_path / "sky.truth.json"
    assert staged.final_path(staged.path / "zarr.json") == final / "zarr.json"
    staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sky.ps.zarr", "sky.truth.json"]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate", "its size is 10, but"),
        ("alter", "its sha256 is"),
        ("no-manifest", "no manifest.json beside it, so it is not a complete radps product"),
        ("unlisted", "not listed in"),
    ],
)
def test_readers_refuse_a_product_without_a_matching_manifest(tmp_path, damage, expected):
    final = tmp_path / "out"
    staged = StagedOutput(final, overwrite=False)
    _write(staged.begin(), {"model.fits": b"m" * 2880, "other.fits": b"o"})
    _commit_with_manifest(staged, ["model.fits"])
    product = final / "model.fits"
    if damage == "truncate":
        product.write_bytes(b"m" * 10)
    elif damage == "alter":
        product.write_bytes(b"n" * 2880)
    elif damage == "no-manifest":
        (final / "manifest.json").unlink()
    else:
        product = final / "other.fits"
    with pytest.raises(manifest.ProductError, match=expected):
        manifest.verify(product)


def test_manifest_provenance(tmp_path):
    provenance.set_local_run("run-1", {"pipeline": "imaging", "parameters": {"imsize": 64}})
    source = tmp_path / "in.ps.zarr"
    _write(source, {"zarr.json": b'{"a": 1}', "VIS/c/0": b"data"})
    document = manifest.build(
        pipeline="imaging",
        parameters={"imsize": 64},
        products=[],
        root=tmp_path,
        inputs={"input": str(source)},
        started=datetime.now(UTC),
        flow_run_id="fr-1",
        run=provenance.of_this_run({}),
    )
    recorded = document["provenance"]
    assert recorded["pipeline_run"]["name"] == "run-1" and recorded["flow_run_id"] == "fr-1"
    assert recorded["pipeline_run"]["spec"]["pipeline"] == "imaging"
    assert recorded["versions"]["radps"] and recorded["parameters"] == {"imsize": 64}
    identity = recorded["inputs"]["input"]
    assert identity["size"] == len(b'{"a": 1}') + 4 and identity["files"] == 2
    before = identity["metadata_sha256"]
    (source / "zarr.json").write_bytes(b'{"a": 2}')  # same size, other metadata
    again = manifest.input_identity(str(source))
    assert again["metadata_sha256"] != before
    json.dumps(document)  # plain JSON throughout


def test_the_image_id_is_that_of_the_container_running_the_reference():
    pod = {
        "status": {
            "containerStatuses": [
                {"image": "docker.io/library/radps:0.1.0", "imageID": "sha256:aaa"},
                {"image": "busybox:1", "imageID": "sha256:bbb"},
            ]
        }
    }
    assert provenance.image_id(pod, "radps:0.1.0") == "sha256:aaa"
    assert provenance.image_id(pod, "other:1") is None
    single = {"status": {"containerStatuses": [{"image": "x", "imageID": "sha256:ccc"}]}}
    assert provenance.image_id(single, "radps:0.1.0") == "sha256:ccc"
    assert provenance.image_id({"status": {}}, "radps:0.1.0") is None


def test_provenance_outside_the_cluster_api_says_why_it_is_missing():
    """A pod whose API cannot be reached (here: not in a cluster) still gets a manifest."""
    record = provenance.of_this_run(
        {"RADPS_POD_NAME": "p", "RADPS_RUN_NAME": "r", "RADPS_RUN_UID": "u", "RADPS_IMAGE": "i"}
    )
    assert record["pipeline_run"] == {"name": "r", "namespace": None, "uid": "u", "spec": None}
    assert record["image"] == {"reference": "i", "id": None}
    assert record["unavailable"].startswith("not read from the Kubernetes API")
