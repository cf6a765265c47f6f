"""`radps validate`: every malformed manifest is rejected with the exact field and why,
never with a traceback; every shipped example is valid."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from radps_operator.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "examples").glob("*.yaml"))

VALID = """\
apiVersion: radps.io/v1alpha1
kind: PipelineRun
metadata:
  name: ok
spec:
  pipeline: imaging
  parameters:
    input: /data/in.ms
    output: /data/out
    imsize: 256
  dask: {workers: 2, threadsPerWorker: 1}
  resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: 2, memory: 4Gi}}
"""


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str]:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(textwrap.dedent(text))
    code = main(["validate", str(manifest)])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output
    return code, " ".join(output.split())


def _replace(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


def test_valid_manifest(tmp_path, capsys):
    code, output = _validate(tmp_path, capsys, VALID)
    assert code == 0, output
    assert "valid PipelineRun 'ok' (imaging)" in output


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_are_valid(example, capsys):
    assert main(["validate", str(example)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            VALID + "  dask: [unclosed\n",
            "run.yaml:14:1: YAML syntax error",
            id="yaml-syntax-with-line",
        ),
        pytest.param(
            _replace("radps.io/v1alpha1", "radps.io/v1"),
            "apiVersion: must be 'radps.io/v1alpha1', got 'radps.io/v1'",
            id="wrong-api-version",
        ),
        pytest.param(
            _replace("kind: PipelineRun", "kind: Job"),
            "kind: must be 'PipelineRun', got 'Job'",
            id="wrong-kind",
        ),
        pytest.param(
            _replace("  pipeline: imaging\n", ""),
            "spec.pipeline: required field is missing",
            id="missing-pipeline",
        ),
        pytest.param(
            _replace("pipeline: imaging", "pipeline: imagine"),
            "spec.pipeline: unknown pipeline 'imagine' "
            "(known: calibration, flagging, imaging, synthesize)",
            id="unknown-pipeline",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    colour: blue"),
            "spec.parameters.colour: unknown parameter of pipeline 'imaging'",
            id="unknown-parameter",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: big"),
            'spec.parameters.imsize: must be of type integer, got "big"',
            id="mistyped-parameter",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 4"),
            "spec.parameters.imsize: 4 is less than the minimum of 16",
            id="parameter-out-of-range",
        ),
        pytest.param(
            _replace("    input: /data/in.ms\n", ""),
            "spec.parameters.input: required parameter is missing",
            id="missing-parameter",
        ),
        pytest.param(
            _replace("memory: 1Gi}", "memory: -1Gi}"),
            "spec.resources.requests.memory: must be a non-negative quantity",
            id="negative-resource",
        ),
        pytest.param(
            _replace("limits: {cpu: 2", "limits: {cpu: -2"),
            "spec.resources.limits.cpu: must be a non-negative quantity",
            id="negative-integer-resource",
        ),
        pytest.param(
            _replace("workers: 2", "workers: -1"),
            "spec.dask.workers: Input should be greater than or equal to 0",
            id="negative-workers",
        ),
        pytest.param(
            _replace("threadsPerWorker: 1", "threadsPerWorker: '1'"),
            "spec.dask.threadsPerWorker: Input should be a valid integer",
            id="string-for-integer",
        ),
        pytest.param(
            _replace("  dask:", "  daskk:"),
            "spec.daskk: unknown field",
            id="unknown-spec-field",
        ),
        pytest.param(
            _replace("name: ok", "name: Not_A_Label"),
            "metadata.name: must be a lowercase DNS label",
            id="bad-name",
        ),
        pytest.param(
            VALID + "---\n" + VALID,
            "holds 2 YAML documents; expected exactly one PipelineRun",
            id="multiple-documents",
        ),
        pytest.param("", "empty: expected one PipelineRun", id="empty"),
        pytest.param("- a\n- b\n", "expected a mapping, got list", id="not-a-mapping"),
    ],
)
def test_rejections_name_the_field(tmp_path, capsys, text, expected):
    code, output = _validate(tmp_path, capsys, text)
    assert code == 2
    assert expected in output


def test_parameters_over_512_kib(tmp_path, capsys):
    blob = json.dumps("x" * (600 * 1024))
    code, output = _validate(
        tmp_path, capsys, _replace("imsize: 256", f"imsize: 256\n    note: {blob}")
    )
    assert code == 2
    assert "spec.parameters: 600 KiB serialized, over the 512 KiB limit" in output


def test_missing_file(tmp_path, capsys):
    code = main(["validate", str(tmp_path / "absent.yaml")])
    assert code == 2
    assert "absent.yaml: no such file" in capsys.readouterr().err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    text = _replace("workers: 2", "workers: -1").replace("cpu: 500m", "cpu: lots")
    code, output = _validate(tmp_path, capsys, text)
    assert code == 2
    assert "spec.dask.workers" in output and "spec.resources.requests.cpu" in output


def test_an_image_outside_the_allowed_list_is_rejected_with_the_rest(tmp_path, capsys):
    """The allowed images (RADPS_ALLOWED_IMAGES, default radps) name what may run instead."""
    text = _replace("pipeline: imaging", "pipeline: imaging\n  image: attacker.invalid/evil:1")
    code, output = _validate(tmp_path, capsys, text.replace("imsize: 256", "imsize: -1"))
    assert code == 2
    assert (
        "spec.image: image 'attacker.invalid/evil:1' is not allowed; allowed: radps (any tag)"
        in output
    )
    assert "spec.parameters.imsize" in output  # reported in the same run


def test_allowed_images_come_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RADPS_ALLOWED_IMAGES", "radps, ghcr.io/org/")
    text = _replace("pipeline: imaging", "pipeline: imaging\n  image: ghcr.io/org/radps:2")
    assert _validate(tmp_path, capsys, text)[0] == 0
    code, output = _validate(tmp_path, capsys, text.replace("ghcr.io/org/", "ghcr.io/orgx/"))
    assert code == 2
    assert "allowed: radps (any tag), ghcr.io/org/ (any repository below)" in output
