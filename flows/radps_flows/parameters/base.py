"""What every pipeline's parameter model shares, and how a flow takes its signature from one.

Prefect builds a flow's parameter schema, its validation and the UI's form from the flow
function's signature and the ``Args:`` section of its docstring. :func:`flow_parameters` gives
the flow function both, generated from the model, so the deployment that Prefect shows and
the schema that the catalog enforces come from the same fields (``tests/unit/test_parameters``
compares them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from radps_flows.parameter_rules import DataParameters, ParameterError, path_errors

F = TypeVar("F", bound=Callable[..., Any])


class PipelineParameters(BaseModel):
    """Unknown parameters are errors; the docstring's first paragraph describes the pipeline."""

    model_config = ConfigDict(extra="forbid")

    pipeline: ClassVar[str]
    """The name a PipelineRun's spec.pipeline gives."""
    flow: ClassVar[str]
    """`module:function` of the Prefect flow, what a deployment points at."""
    data: ClassVar[DataParameters]
    """Which parameters name data: read (never written or removed by a run) and written."""
    pause_input: ClassVar[type[BaseModel] | None] = None
    """What the pipeline asks for at a pause (an interactive run), None: it never pauses."""

    @classmethod
    def rules(cls, values: Mapping[str, Any]) -> list[ParameterError]:
        """What the JSON schema cannot say: one parameter against another. ``values`` are
        the parameters with the defaults; values of the wrong type are skipped (the schema
        reports those)."""
        return []

    @classmethod
    def check(
        cls, parameters: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
    ) -> list[ParameterError]:
        """Every rule ``parameters`` (with ``defaults`` for what they leave out) break: the
        places data may be read and written, and :meth:`rules`."""
        values = {**(defaults or {}), **parameters}
        return path_errors(cls.data, values) + cls.rules(values)

    @classmethod
    def raise_if_invalid(cls, parameters: Mapping[str, Any]) -> None:
        """For a flow at run time: its own arguments (defaults already applied)."""
        errors = cls.check(parameters)
        if errors:
            raise ValueError("; ".join(f"{e.path}: {e.message}" for e in errors))

    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split())

    @classmethod
    def parameter_schema(cls) -> dict[str, Any]:
        """The JSON schema of the parameters, in the shape Prefect gives a flow's (titles are
        the names, ``position`` orders the UI's form, nested models under ``definitions``)."""
        schema = cls.model_json_schema(ref_template="#/definitions/{model}")
        definitions = schema.pop("$defs", {})
        properties = {}
        for position, (name, prop) in enumerate(schema["properties"].items()):
            properties[name] = {**prop, "position": position, "title": name}
        out: dict[str, Any] = {"title": "Parameters", "type": "object", "properties": properties}
        out["required"] = schema.get("required", [])
        out["definitions"] = definitions
        out["additionalProperties"] = False
        return out


def flow_parameters(model: type[PipelineParameters]) -> Callable[[F], F]:
    """Give a flow function ``def f(**arguments)`` the keyword-only signature and the
    ``Args:`` docstring of ``model``'s fields, for Prefect to read."""

    def decorate(fn: F) -> F:
        parameters = []
        for name, field in model.model_fields.items():
            default = inspect.Parameter.empty if field.is_required() else field.default
            parameters.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=Annotated[field.annotation, field],
                )
            )
        returns = inspect.signature(fn).return_annotation
        fn.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
        fn.__annotations__ = {}
        args = [f"    {name}: {field.description}" for name, field in model.model_fields.items()]
        fn.__doc__ = "\n".join([model.description(), "", "Args:", *args]) + "\n"
        return fn

    return decorate
