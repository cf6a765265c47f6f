"""Each pipeline's parameters as one Pydantic model, in modules that import only pydantic.

A model is the one source of truth for its pipeline's parameters: the flow's signature and
docstring (:func:`radps_flows.parameters.base.flow_parameters`), the catalog's JSON schema,
``radps pipelines`` and validation all derive from it. ``radps validate`` and the operator load
these modules without the science stack (xradio, ducc0, dask, Prefect).
"""
