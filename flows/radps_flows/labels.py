"""Kubernetes labels that tie a run's objects (flow-run Job, DaskCluster) to its PipelineRun;
the operator finds and cleans up by them, the flow sets them. No imports: both sides load it."""

RUN_UID_LABEL = "radps.io/run-uid"
RUN_NAME_LABEL = "radps.io/run-name"
PIPELINE_LABEL = "radps.io/pipeline"
