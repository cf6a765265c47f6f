"""What the operator and flow-run pods share about PipelineRuns: the labels that tie a run's
objects (flow-run Job, DaskCluster) to its PipelineRun (the operator finds and cleans up by
them, the flow sets them), and the PipelineRun API's coordinates (radps_flows.origin reads
PipelineRuns; radps_operator.api defines them with these). No imports: both sides load it."""

PIPELINERUN_GROUP = "radps.io"
PIPELINERUN_VERSION = "v1alpha1"
PIPELINERUN_PLURAL = "pipelineruns"

RUN_UID_LABEL = "radps.io/run-uid"
RUN_NAME_LABEL = "radps.io/run-name"
PIPELINE_LABEL = "radps.io/pipeline"
