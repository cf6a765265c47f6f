"""Each pipeline's parameter model is the one source of its parameters: the Prefect flow's
signature, docstring and schema (what a deployment and the UI's form carry) are generated from
it, and the catalog's schema (what the operator and `radps validate` enforce) is the same."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from prefect.utilities.callables import parameter_schema

from radps_flows.catalog import PARAMETER_MODELS, pipelines
from radps_flows.core.synth import SynthesisSpec
from radps_flows.parameters.synthesize import SynthesizeParameters


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_the_flow_and_the_catalog_share_one_schema(name: str):
    pipeline = pipelines()[name]
    flow = pipeline.load_flow()
    assert flow.name == pipeline.flow_name
    prefect_schema = parameter_schema(flow.fn).model_dump_for_openapi()
    assert {**prefect_schema, "additionalProperties": False} == pipeline.parameter_schema
    described = [p for p in pipeline.parameter_schema["properties"].values() if p["description"]]
    assert len(described) == len(pipeline.parameter_schema["properties"])
    assert pipeline.description and flow.fn.__doc__.startswith(pipeline.description)


@pytest.mark.parametrize("model", PARAMETER_MODELS, ids=lambda m: m.pipeline)
def test_flow_signatures_are_the_models_fields(model):
    flow = pipelines()[model.pipeline].load_flow()
    signature = inspect.signature(flow.fn)
    assert list(signature.parameters) == list(model.model_fields)
    for name, parameter in signature.parameters.items():
        field = model.model_fields[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        expected = inspect.Parameter.empty if field.is_required() else field.default
        assert parameter.default == expected


def test_a_flow_refuses_what_its_model_refuses():
    flow = pipelines()["imaging"].load_flow()
    ok = flow.validate_parameters({"input": "/data/in", "output": "/data/out", "imsize": 64})
    assert ok["imsize"] == 64 and ok["cell_arcsec"] == 1.0
    with pytest.raises(Exception, match="multiple of 2"):
        flow.validate_parameters({"input": "/data/in", "output": "/data/out", "imsize": 65})


def test_synthesize_defaults_are_the_synthesis_specs():
    """The light model may not import the array core, so its defaults are written again; here
    they are held to the core's."""
    spec = {f.name: f.default for f in dataclasses.fields(SynthesisSpec)}
    for name, field in SynthesizeParameters.model_fields.items():
        if name in ("output", "overwrite", "sources"):
            continue
        assert field.default == spec[name], name
