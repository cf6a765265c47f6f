"""Running PipelineRuns without a cluster: a local Prefect server and the `radps run` loop."""
