# Local single-node Kubernetes cluster built from upstream (see hack/README.md).
#   make cluster-up [MODE=control-plane|full]   start (idempotent); prints the kubeconfig path
#   make cluster-down [PURGE=1]                 stop everything it started, undo host changes
#   make cluster-status                         what runs, and the API server's answer
#   eval "$$(hack/cluster-env.sh)"              KUBECONFIG and PATH (kubectl, helm) for a shell
#   make cluster-build                          build/cache every binary and image (helm too)
#   make image                                  build the radps image (no registry) and load it
#                                               into the cluster's containerd when it runs
# Binaries and state live in $${RADPS_CACHE:-$$HOME/.cache/radps}, outside the repo.
MODE ?= control-plane
PURGE ?= 0

.PHONY: cluster-up cluster-down cluster-status cluster-build image

cluster-up:
	hack/cluster-up.sh $(MODE)

cluster-down:
	PURGE=$(PURGE) hack/cluster-down.sh

cluster-status:
	hack/cluster-status.sh

cluster-build:
	hack/build.sh all

image:
	hack/image.sh all
