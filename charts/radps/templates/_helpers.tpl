{{- define "radps.name" -}}radps{{- end -}}

{{- define "radps.fullname" -}}
{{- if contains "radps" .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-radps" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "radps.labels" -}}
app.kubernetes.io/name: {{ include "radps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: radps
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: (dict "root" $ "component" "operator") */}}
{{- define "radps.selector" -}}
app.kubernetes.io/name: {{ include "radps.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "radps.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The images spec.image may name (radps_operator.image_policy): the chart's own repository
and images.allowed, as one comma list. */}}
{{- define "radps.allowedImages" -}}
{{- prepend .Values.images.allowed .Values.image.repository | uniq | join "," -}}
{{- end -}}

{{- define "radps.serverName" -}}{{ include "radps.fullname" . }}-prefect-server{{- end -}}

{{- define "radps.apiUrl" -}}
{{- if .Values.prefect.apiUrl -}}{{ .Values.prefect.apiUrl }}
{{- else -}}http://{{ include "radps.serverName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.prefect.server.port }}/api
{{- end -}}
{{- end -}}

{{- define "radps.uiUrl" -}}
{{- if .Values.prefect.uiUrl -}}{{ .Values.prefect.uiUrl }}
{{- else -}}{{ include "radps.apiUrl" . | trimSuffix "/api" }}
{{- end -}}
{{- end -}}

{{/* Prefect client settings shared by every container that calls the API */}}
{{- define "radps.prefectClientEnv" -}}
- name: PREFECT_API_URL
  value: {{ include "radps.apiUrl" . | quote }}
- name: PREFECT_SERVER_ANALYTICS_ENABLED
  value: "false"
- name: PREFECT_HOME
  value: /tmp/prefect
- name: HOME
  value: /tmp
{{- include "radps.authEnv" (dict "root" . "name" "PREFECT_API_AUTH_STRING") }}
{{- end -}}

{{/* The Secret holding the Prefect API's basic-auth string ("user:password"): the one named
in prefect.basicAuth.existingSecret, or the one the chart generates; empty with auth off. */}}
{{- define "radps.authSecretName" -}}
{{- if .Values.prefect.basicAuth.enabled -}}
{{ .Values.prefect.basicAuth.existingSecret | default (printf "%s-prefect-auth" (include "radps.fullname" .)) }}
{{- end -}}
{{- end -}}

{{/* An env entry named .name with the auth string from its Secret (never a literal); nothing
with auth off: (dict "root" $ "name" "PREFECT_API_AUTH_STRING") */}}
{{- define "radps.authEnv" -}}
{{- with include "radps.authSecretName" .root }}
- name: {{ $.name }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.root.Values.prefect.basicAuth.secretKey }}
{{- end }}
{{- end -}}

{{/* The auth string (base64) the chart writes into Secrets: the one already in the release
namespace, so an upgrade keeps it (lookup), or else a new random one for a generated Secret.
Computed once per render (kept in .Values), so every copy holds the same string. Empty when an
existing Secret cannot be read (helm template: no cluster). */}}
{{- define "radps.authStringB64" -}}
{{- $auth := .Values.prefect.basicAuth }}
{{- if not (hasKey $auth "_b64") }}
{{- $b64 := "" }}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "radps.authSecretName" .) }}
{{- if and $found (hasKey ($found.data | default dict) $auth.secretKey) }}
{{- $b64 = index $found.data $auth.secretKey }}
{{- else if not $auth.existingSecret }}
{{- $b64 = printf "radps:%s" (randAlphaNum 40) | b64enc }}
{{- end }}
{{- $_ := set $auth "_b64" $b64 }}
{{- end }}
{{- $auth._b64 -}}
{{- end -}}

{{- define "radps.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "radps.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{- define "radps.watchedNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}{{ join "," .Values.operator.watchNamespaces }}
{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

{{/* The first namespace where runs are served (the release's when the operator serves all):
where `helm test` applies its PipelineRun, and NOTES.txt's examples */}}
{{- define "radps.firstRunNamespace" -}}
{{- if include "radps.clusterWide" . -}}{{ .Release.Namespace }}
{{- else -}}{{ first (splitList "," (include "radps.watchedNamespaces" .)) }}
{{- end -}}
{{- end -}}

{{- define "radps.clusterWide" -}}
{{- if has "*" .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* settings of the flow-pod template, read by radps_operator.work_pool */}}
{{- define "radps.workerEnv" -}}
{{ include "radps.prefectClientEnv" . }}
- {name: RADPS_FLOW_NAMESPACE, value: {{ .Release.Namespace | quote }}}
- {name: RADPS_DEFAULT_IMAGE, value: {{ include "radps.image" . | quote }}}
- {name: RADPS_FLOW_SERVICE_ACCOUNT, value: {{ .Values.flowRuns.serviceAccount.name | quote }}}
- {name: RADPS_DATA_CLAIM, value: {{ .Values.data.existingClaim | quote }}}
- {name: RADPS_DATA_MOUNT_PATH, value: {{ .Values.data.mountPath | quote }}}
- {name: RADPS_AUTH_SECRET, value: {{ include "radps.authSecretName" . | quote }}}
- {name: RADPS_AUTH_SECRET_KEY, value: {{ .Values.prefect.basicAuth.secretKey | quote }}}
- {name: RADPS_FINISHED_JOB_TTL_SECONDS, value: {{ .Values.flowRuns.finishedJobTtlSeconds | quote }}}
- {name: RADPS_FLOW_POD_SETTINGS, value: {{ include "radps.flowPodSettings" . | quote }}}
{{- include "radps.objectStoreWorkerEnv" . }}
{{- if not (include "radps.clusterWide" .) }}
{{- /* prefect-kubernetes' observer (marks a run Crashed when its pod fails) watches the whole
cluster unless told otherwise, which namespaced RBAC forbids: it then retried 403s forever */}}
- {name: PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES, value: {{ include "radps.watchedNamespaces" . | quote }}}
{{- end }}
{{- end -}}

{{/* Bind ClusterRole .name to service account .subject (default .name) in every watched
namespace, or cluster-wide when the operator watches all: (dict "root" $ "name" N) */}}
{{- define "radps.bindPerWatchedNamespace" -}}
{{- $root := .root }}
{{- $subject := .subject | default .name }}
{{- if include "radps.clusterWide" $root }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}
  labels:
    {{- include "radps.labels" $root | nindent 4 }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{ .name }}}
subjects:
  - {kind: ServiceAccount, name: {{ $subject }}, namespace: {{ $root.Release.Namespace }}}
{{- else }}
{{- range ($root.Values.operator.watchNamespaces | default (list $root.Release.Namespace)) }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $.name }}
  namespace: {{ . }}
  labels:
    {{- include "radps.labels" $root | nindent 4 }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{ $.name }}}
subjects:
  - {kind: ServiceAccount, name: {{ $subject }}, namespace: {{ $root.Release.Namespace }}}
{{- end }}
{{- end }}
{{- end -}}

{{/* What a flow-run pod may do in its namespace: make its DaskCluster, find its scheduler */}}
{{- define "radps.flowRunRules" -}}
- apiGroups: [kubernetes.dask.org]
  resources: [daskclusters, daskworkergroups, daskworkergroups/scale, daskautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods, services, pods/log]
  verbs: [get, list, watch]
{{- /* radps_flows.origin: the pod runs its flow run only if a PipelineRun here records it */}}
- apiGroups: [radps.io]
  resources: [pipelineruns]
  verbs: [get, list]
{{- /* No pods/portforward: in the cluster, dask-kubernetes reaches the scheduler through its
Service, and a port-forward would let the flow pod reach any pod of the namespace past its
NetworkPolicy. */}}
{{- end -}}

{{/* The ClusterRole a cluster-wide operator binds to the flow-run account per namespace */}}
{{- define "radps.flowClusterRole" -}}
{{ include "radps.fullname" . }}-flow-run
{{- end -}}

{{/* The object store for s3:// data (docs/object-storage.md): configured when the chart runs
its own (objectStore.enabled) or names one (objectStore.endpoint). */}}
{{- define "radps.objectStoreConfigured" -}}
{{- if or .Values.objectStore.enabled .Values.objectStore.endpoint -}}true{{- end -}}
{{- end -}}

{{- define "radps.objectStoreName" -}}{{ include "radps.fullname" . }}-objectstore{{- end -}}

{{- define "radps.objectStoreEndpoint" -}}
{{- if .Values.objectStore.endpoint -}}{{ .Values.objectStore.endpoint }}
{{- else if .Values.objectStore.enabled -}}http://{{ include "radps.objectStoreName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.objectStore.server.port }}
{{- end -}}
{{- end -}}

{{/* The Secret holding the object store's key pair: objectStore.existingSecret, or the one
the chart generates for its own server. */}}
{{- define "radps.objectStoreSecretName" -}}
{{- if include "radps.objectStoreConfigured" . -}}
{{ .Values.objectStore.existingSecret | default (include "radps.objectStoreName" .) }}
{{- end -}}
{{- end -}}

{{/* The generated key pair (base64), kept across upgrades (lookup), computed once per
render: (list accessKeyB64 secretKeyB64), or empty strings when it cannot be read. */}}
{{- define "radps.objectStoreKeysB64" -}}
{{- $store := .Values.objectStore }}
{{- if not (hasKey $store "_keys") }}
{{- $keys := list "" "" }}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "radps.objectStoreSecretName" .) }}
{{- if and $found (hasKey ($found.data | default dict) $store.accessKeyIdKey) }}
{{- $keys = list (index $found.data $store.accessKeyIdKey) (index $found.data $store.secretAccessKeyKey) }}
{{- else if not $store.existingSecret }}
{{- $keys = list (printf "radps-%s" (randAlphaNum 12 | lower) | b64enc) (randAlphaNum 40 | b64enc) }}
{{- end }}
{{- $_ := set $store "_keys" $keys }}
{{- end }}
{{- join " " $store._keys -}}
{{- end -}}

{{/* settings of the object store in the flow-pod template (radps_operator.work_pool) */}}
{{- define "radps.objectStoreWorkerEnv" -}}
{{- if include "radps.objectStoreConfigured" . }}
- {name: RADPS_OBJECT_STORE_ENDPOINT, value: {{ include "radps.objectStoreEndpoint" . | quote }}}
- {name: RADPS_OBJECT_STORE_REGION, value: {{ .Values.objectStore.region | quote }}}
- {name: RADPS_OBJECT_STORE_SECRET, value: {{ include "radps.objectStoreSecretName" . | quote }}}
- {name: RADPS_OBJECT_STORE_ACCESS_KEY_KEY, value: {{ .Values.objectStore.accessKeyIdKey | quote }}}
- {name: RADPS_OBJECT_STORE_SECRET_KEY_KEY, value: {{ .Values.objectStore.secretAccessKeyKey | quote }}}
{{- end }}
{{- end -}}

{{/* The port pods reach the object store on: the chart's server's, or the endpoint's own
(its explicit port, else 443 for https and 80 for http). */}}
{{- define "radps.objectStorePort" -}}
{{- if .Values.objectStore.endpoint -}}
{{- $url := urlParse .Values.objectStore.endpoint }}
{{- $host := splitList ":" $url.host }}
{{- if gt (len $host) 1 }}{{ last $host }}{{ else if eq $url.scheme "https" }}443{{ else }}80{{ end }}
{{- else -}}{{ .Values.objectStore.server.port }}
{{- end -}}
{{- end -}}

{{/* env entries that point a pod's S3 clients at the object store (AWS's own variables; the
key pair from its Secret, never a literal) */}}
{{- define "radps.objectStoreEnv" -}}
{{- with include "radps.objectStoreEndpoint" . }}
- {name: AWS_ENDPOINT_URL_S3, value: {{ . | quote }}}
{{- end }}
- {name: AWS_REGION, value: {{ .Values.objectStore.region | quote }}}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ include "radps.objectStoreSecretName" . }}, key: {{ .Values.objectStore.accessKeyIdKey }}}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ include "radps.objectStoreSecretName" . }}, key: {{ .Values.objectStore.secretAccessKeyKey }}}}
{{- end -}}


{{/* Where a pod of one role runs, and from which registries, as JSON: imagePullSecrets, then
the role's own nodeSelector, tolerations, affinity and priorityClassName, each falling back to
the chart-wide `scheduling` value: (dict "root" $ "role" .Values.operator.scheduling) */}}
{{- define "radps.podSettings" -}}
{{- $all := .root.Values.scheduling -}}
{{- $own := .role | default dict -}}
{{- $out := dict "imagePullSecrets" .root.Values.imagePullSecrets -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" "priorityClassName" -}}
{{- $_ := set $out $key (get $own $key | default (get $all $key)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* radps.podSettings as pod spec fields, the empty ones left out: (dict "root" $ "role" R) */}}
{{- define "radps.placement" -}}
{{- $fields := list -}}
{{- range $key, $value := include "radps.podSettings" . | fromJson -}}
{{- if and $value (kindIs "string" $value) -}}
{{- $fields = append $fields (printf "%s: %s" $key (quote $value)) -}}
{{- else if $value -}}
{{- $fields = append $fields (printf "%s:\n%s" $key (toYaml $value | indent 2)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $fields -}}
{{- end -}}

{{/* What the flow-run pods and their Dask pods get besides the chart's own settings, as the
JSON radps_operator.work_pool reads (RADPS_FLOW_POD_SETTINGS): placement, pull secrets,
extra env, volumes and mounts */}}
{{- define "radps.flowPodSettings" -}}
{{- $settings := include "radps.podSettings" (dict "root" . "role" .Values.flowRuns.scheduling) | fromJson -}}
{{- $_ := set $settings "extraEnv" .Values.flowRuns.extraEnv -}}
{{- $_ = set $settings "extraVolumes" .Values.flowRuns.extraVolumes -}}
{{- $_ = set $settings "extraVolumeMounts" .Values.flowRuns.extraVolumeMounts -}}
{{- toJson $settings -}}
{{- end -}}
