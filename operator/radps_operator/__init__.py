"""radps operator: the PipelineRun API, its validation, the kopf operator and the `radps` CLI."""

__version__ = "0.1.0"
