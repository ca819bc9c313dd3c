{{/*
Chart name, truncated to 63 characters (the DNS label limit of Kubernetes names and label values).
*/}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or just <release> when the release name already contains the chart name.
Truncated to 63 characters; suffixed names ("-metrics", "-test") truncate the base further.
*/}}
{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A name with a suffix, still at most 63 characters: the base is shortened, never the suffix.
Usage: include "finetune-operator.suffixed" (list . "metrics")
*/}}
{{- define "finetune-operator.suffixed" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "finetune-operator.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/*
chart label value: name-version.
*/}}
{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{/*
Selector labels: stable across upgrades, so no chart or app version here (a Deployment's selector is immutable).
*/}}
{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest when a digest is given, else repository:tag (tag defaults to appVersion).
*/}}
{{- define "finetune-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The metrics Service's name.
*/}}
{{- define "finetune-operator.metricsServiceName" -}}
{{- include "finetune-operator.suffixed" (list . "metrics") }}
{{- end }}

{{/*
True (non-empty) when prometheus-operator's API is served, so ServiceMonitor/PrometheusRule can be created.
*/}}
{{- define "finetune-operator.hasMonitoringAPI" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/*
RBAC rules the operator needs in each namespace it watches (see rbac.yaml for why each verb).
*/}}
{{- define "finetune-operator.namespacedRules" -}}
- apiGroups: ["finetune.dev"]
  resources: ["lrsweeps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["finetune.dev"]
  resources: ["lrsweeps/status", "finetunejobs/status"]
  verbs: ["patch"]
- apiGroups: ["finetune.dev"]
  resources: ["lrsweeps/finalizers", "finetunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues"]
  verbs: ["get"]
{{- end }}
{{/*
RBAC rule for kopf's scan of the served resources (always cluster-scoped).
*/}}
{{- define "finetune-operator.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
