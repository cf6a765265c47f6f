"""Manifests as kubectl reads them: several documents a file, standard input,
`metadata.generateName`, and `-p key=value` overrides read as YAML."""

from __future__ import annotations

import io
import re

import pytest

from radps_operator.cli import main
from radps_operator.local.manifests import read_manifests
from radps_operator.validation import InvalidPipelineRun, validate_manifest
from tests.unit.test_validate import VALID


def test_every_document_of_a_file_is_a_run_named_by_its_position(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text(VALID + "---\n" + VALID.replace("name: ok", "name: two"))
    first, second = read_manifests([path])
    assert (first.source, second.source) == (f"{path}#1", f"{path}#2")
    assert second.document["metadata"]["name"] == "two"


def test_standard_input_and_generate_name(tmp_path):
    text = VALID.replace("name: ok", "generateName: nightly-")
    (manifest,) = read_manifests(["-"], stdin=io.StringIO(text))
    assert manifest.source == "<stdin>"
    name = manifest.document["metadata"]["name"]
    assert re.fullmatch(r"nightly-[a-z0-9]{5}", name), name
    assert "generateName" not in manifest.document["metadata"]
    assert validate_manifest(manifest.document).metadata.name == name


def test_overrides_are_typed_as_yaml_and_apply_to_every_run(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text(VALID + "---\n" + VALID.replace("name: ok", "name: two"))
    overrides = ["imsize=1024", "clean=true", "image_formats=[fits, casa]", "output=/data/x"]
    for manifest in read_manifests([path], overrides):
        parameters = manifest.document["spec"]["parameters"]
        assert parameters["imsize"] == 1024 and parameters["clean"] is True
        assert parameters["image_formats"] == ["fits", "casa"]
        assert parameters["output"] == "/data/x" and parameters["input"] == "/data/in.ms"
    assert "imsize: 256" in path.read_text()  # the file itself is never changed


def test_every_problem_of_every_source_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(InvalidPipelineRun) as caught:
        read_manifests([bad, tmp_path / "absent.yaml"], ["no-equals", "x=[1,"])
    text = "\n".join(str(e) for e in caught.value.errors)
    assert "-p no-equals: expected key=value" in text
    assert "-p x=[1,: the value is not YAML" in text
    assert f"{bad}:2:1" in text and "absent.yaml: no such file" in text


def test_validate_reads_stdin_applies_overrides_and_names_the_bad_document(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("sys.stdin", io.StringIO(VALID + "---\n" + VALID))
    assert main(["validate", "-", "-p", "imsize=7"]) == 2
    err = capsys.readouterr().err
    assert "<stdin>#1" in err and "<stdin>#2" in err and "spec.parameters.imsize" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(VALID))
    assert main(["validate", "-", "-p", "imsize=1024"]) == 0
    assert "<stdin>: valid PipelineRun 'ok' (imaging)" in capsys.readouterr().out
