"""radps flows: the pipeline catalog, its Prefect flows, and the pure array core."""
