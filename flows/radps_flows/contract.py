"""What the operator and flow-run pods share, in one import-free module (both sides load it):
the PipelineRun API's coordinates (radps_flows.origin and provenance read PipelineRuns;
radps_operator.api defines them with these), the labels that tie a run's objects (flow-run
Job, DaskCluster, pods) to its PipelineRun (the operator finds and cleans up by them, the flow
sets them), the environment the operator gives each flow-run pod, and the artifact through
which a flow run reports its products."""

PIPELINERUN_GROUP = "radps.io"
PIPELINERUN_VERSION = "v1alpha1"
PIPELINERUN_PLURAL = "pipelineruns"

RUN_UID_LABEL = "radps.io/run-uid"
RUN_NAME_LABEL = "radps.io/run-name"
PIPELINE_LABEL = "radps.io/pipeline"

RUN_NAME_ENV = "RADPS_RUN_NAME"
RUN_NAMESPACE_ENV = "RADPS_RUN_NAMESPACE"
RUN_UID_ENV = "RADPS_RUN_UID"
IMAGE_ENV = "RADPS_IMAGE"
"""The image reference the run asked for (its ID, the digest that ran, is read from the pod)."""

OUTPUTS_ARTIFACT_DESCRIPTION = "radps outputs"
"""The table artifact listing a flow run's products; the operator copies its rows into
`.status.outputs`."""
