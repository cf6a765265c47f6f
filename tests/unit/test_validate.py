"""`radps validate`: every malformed manifest is rejected with the exact field and why,
never with a traceback; every shipped example is valid."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from radps_operator.cli import main
from radps_operator.validation import InvalidPipelineRun, validate_spec

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
            "apiVersion: must be 'radps.io/v1alpha1', got \"radps.io/v1\"",
            id="wrong-api-version",
        ),
        pytest.param(
            _replace("kind: PipelineRun", "kind: Job"),
            "kind: must be 'PipelineRun', got \"Job\"",
            id="wrong-kind",
        ),
        pytest.param(
            _replace("  pipeline: imaging\n", ""),
            "spec.pipeline: required field is missing",
            id="missing-pipeline",
        ),
        pytest.param(
            _replace("pipeline: imaging", "pipeline: imagine"),
            'spec.pipeline: unknown pipeline "imagine" '
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
            'spec.parameters.imsize: must be an even integer from 16 to 65536, got "big"',
            id="mistyped-parameter",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 4"),
            "spec.parameters.imsize: must be >= 16, got 4",
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
            _replace("  dask:", "  cache: Off\n  dask:"),
            "spec.cache: Input should be 'Use', 'Refresh' or 'Off' (got false: YAML reads an "
            'unquoted Off as false; write "Off")',
            id="unquoted-off",
        ),
        pytest.param(
            _replace("  dask:", "  fromStage: gridding\n  dask:"),
            "spec.fromStage: Input should be 'conversion', 'flagging', 'calibration' or 'imaging'",
            id="unknown-stage",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    cache: Use").replace(
                "  dask:", "  cache: Refresh\n  dask:"
            ),
            'spec.cache: "Refresh" contradicts spec.parameters.cache "Use": set one of them',
            id="cache-twice",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    pause_timeout_action: fail").replace(
                "  dask:", "  pauseTimeoutAction: Finish\n  dask:"
            ),
            'spec.pauseTimeoutAction: "Finish" contradicts spec.parameters.pause_timeout_action '
            '"fail": set one of them',
            id="pause-timeout-action-twice",
        ),
        pytest.param(
            _replace("  dask:", "  pauseTimeoutAction: Later\n  dask:"),
            "spec.pauseTimeoutAction: Input should be 'Fail' or 'Finish'",
            id="unknown-timeout-action",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    interactive: true"),
            "spec.parameters.interactive: pauses for CLEAN's settings: set clean: true",
            id="interactive-without-clean",
        ),
        pytest.param(VALID + "---\n" + VALID.replace("imsize: 256", "imsize: 7"), "#2", id="2nd"),
        pytest.param("", "empty: expected a PipelineRun", id="empty"),
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


# What the fuzzing of issue 12 found: each crashed, was unclear, or was wrongly accepted.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    cell_arcsec: .nan"),
            "spec.parameters.cell_arcsec: must be a finite number, got nan",
            id="nan",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    cell_arcsec: -.inf"),
            "spec.parameters.cell_arcsec: must be a finite number, got -inf",
            id="inf",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: " + "9" * 5000),
            "spec.parameters.imsize: integer of 5000 digits is out of range",
            id="5000-digit-integer",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    imsize: 512"),
            "run.yaml:11:5: duplicate key 'imsize' (first on line 10)",
            id="duplicate-key",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    model_image: !!binary aGVsbG8="),
            "has no JSON equivalent",
            id="binary-tag",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    mask: !!set {a, b}"),
            "has no JSON equivalent",
            id="set-tag",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    1: x"),
            "mapping key '1' is a int, not a string: quote it",
            id="integer-key",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    model: " + "[" * 100 + "]" * 100),
            "nested deeper than 32 levels",
            id="nested-100-deep",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    model: " + "[" * 1000 + "]" * 1000),
            "exceeded maximum nesting depth",
            id="nested-1000-deep",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 255"),
            "spec.parameters.imsize: must be a multiple of 2, got 255",
            id="odd-imsize",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    weighting: briggs"),
            "spec.parameters.weighting: briggs weighting is implemented with clean: true",
            id="briggs-without-clean",
        ),
        pytest.param(
            _replace(
                "imsize: 256",
                "imsize: 256\n    clean: true\n    mask: [[0, 0, 10, 10], [200, 200, 256, 250]]",
            ),
            "spec.parameters.mask.1: box [200, 200, 256, 250] must satisfy 0 <= x0 <= x1 < imsize",
            id="mask-outside-image",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    rms_box: [1, 2, 3]"),
            "spec.parameters.rms_box: must have at least 4 items, got 3",
            id="short-box-not-anyof",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    solint: sometimes"),
            'spec.parameters.solint: must be "int" or "inf" or a number > 0, got "sometimes"',
            id="solint-alternatives-in-words",
        ),
        pytest.param(
            _replace("imsize: 256", "imsize: 256\n    model: [{flux_jy: bright}]"),
            'spec.parameters.model.0.flux_jy: must be a number, got "bright"',
            id="model-item-field",
        ),
        pytest.param(
            _replace("memory: 1Gi}", "memory: 8Gi}"),
            "spec.resources.requests.memory: request 8Gi is above the limit 4Gi",
            id="request-above-limit",
        ),
        pytest.param(
            _replace("  dask:", "  timeoutSeconds: 1000000000000\n  dask:"),
            "spec.timeoutSeconds: Input should be less than or equal to 2592000",
            id="timeout-bounded",
        ),
        pytest.param(
            _replace("output: /data/out", "output: /data/in.ms"),
            "spec.parameters.output: is the same path as input (/data/in.ms)",
            id="output-is-input",
        ),
        pytest.param(
            _replace("output: /data/out", "output: /data"),
            "spec.parameters.output: contains input (/data/in.ms)",
            id="output-contains-input",
        ),
        pytest.param(
            _replace("output: /data/out", "output: /data/in.ms/products"),
            "spec.parameters.output: lies inside input (/data/in.ms)",
            id="output-inside-input",
        ),
        pytest.param(
            _replace("input: /data/in.ms", "input: ../../etc"),
            "spec.parameters.input: must not contain '..'",
            id="dot-dot",
        ),
        pytest.param(
            _replace("input: /data/in.ms", "input: /proc/self/environ"),
            "spec.parameters.input: '/proc/self/environ' is in the system tree /proc",
            id="proc",
        ),
        pytest.param(
            _replace("input: /data/in.ms", "input: gs://bucket/in.ms"),
            "spec.parameters.input: gs:// is not supported: give a path or an s3://bucket/key URL",
            id="other-scheme",
        ),
        pytest.param(
            _replace("input: /data/in.ms", "input: s3://My_Bucket/in.ms"),
            "spec.parameters.input: 'My_Bucket' is not an S3 bucket name",
            id="bucket-name",
        ),
        pytest.param(
            _replace("output: /data/out", "output: s3://bucket/"),
            "spec.parameters.output: 's3://bucket/' names a whole bucket",
            id="whole-bucket",
        ),
        pytest.param(
            _replace("input: /data/in.ms", "input: s3://bucket/a/../b"),
            "its key must not contain '//', '.' or '..' parts",
            id="url-dot-dot",
        ),
        pytest.param(
            _replace("input: /data/in.ms", "input: s3://b-1/in.ms").replace(
                "output: /data/out", "output: s3://b-1/in.ms/products/"
            ),
            "spec.parameters.output: lies inside input (s3://b-1/in.ms)",
            id="url-output-inside-input",
        ),
    ],
)
def test_fuzz_findings_are_clear_rejections(tmp_path, capsys, text, expected):
    code, output = _validate(tmp_path, capsys, text)
    assert code == 2
    assert expected in output
    assert len(output) < 2000


def test_unquoted_date_is_the_string_written(tmp_path, capsys):
    """As `kubectl apply` reads it: not a crash in the size check, not a datetime."""
    code, output = _validate(tmp_path, capsys, _replace("/data/out", "2024-05-01"))
    assert code == 0, output


def test_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\n"
    started = time.perf_counter()
    code, output = _validate(tmp_path, capsys, VALID + bomb.replace("a", "  a", 0))
    assert time.perf_counter() - started < 1
    assert code == 2
    assert "expands to more than 200,000 values (through YAML aliases?)" in output


def test_a_huge_list_is_not_echoed(tmp_path, capsys):
    items = ", ".join(["[0, 0, 1, 1]"] * 20000)
    code, output = _validate(
        tmp_path, capsys, _replace("imsize: 256", f"imsize: 256\n    rms_box: [{items}]")
    )
    assert code == 2
    assert "spec.parameters.rms_box: must have at most 4 items, got 20000" in output
    assert len(output) < 1000


def test_outer_errors_do_not_hide_parameter_errors(tmp_path, capsys):
    text = _replace("  dask:", "  daskk:").replace("imsize: 256", "imsize: 4")
    code, output = _validate(tmp_path, capsys, text)
    assert code == 2
    assert "spec.daskk: unknown field" in output
    assert "spec.parameters.imsize: must be >= 16, got 4" in output


def test_the_operator_check_never_raises_anything_else():
    """What the API server may hand the operator: free-form parameters of any depth."""
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    spec = {"pipeline": "imaging", "parameters": {"input": "/a", "output": "/b", "model": deep}}
    with pytest.raises(InvalidPipelineRun) as caught:
        validate_spec(spec, allowed_images=("radps",))
    assert "nested deeper than 32 levels" in str(caught.value)
    spec["parameters"] = {"input": "/a", "output": "/b", "imsize": 10**5000}
    with pytest.raises(InvalidPipelineRun, match=r"spec\.parameters\.imsize: integer out of range"):
        validate_spec(spec, allowed_images=("radps",))


def test_pause_fields_for_a_pipeline_that_never_pauses(tmp_path, capsys):
    flagging = VALID.replace("pipeline: imaging", "pipeline: flagging").replace(
        "    imsize: 256\n", ""
    )
    text = flagging.replace("  dask:", "  resume: {niter: 5}\n  pauseTimeoutSeconds: 60\n  dask:")
    code, output = _validate(tmp_path, capsys, text)
    assert code == 2
    assert "spec.resume: the flagging pipeline never pauses for input" in output
    assert "spec.pauseTimeoutSeconds: the flagging pipeline never pauses for input" in output
