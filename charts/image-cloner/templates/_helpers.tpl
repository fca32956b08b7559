{{/* The chart's name, overridable. */}}
{{- define "image-cloner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects. Cluster-scoped objects (ClusterRoles and their
bindings) use it too, so two releases never share them.
*/}}
{{- define "image-cloner.fullname" -}}
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

{{- define "image-cloner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-cloner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-cloner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "image-cloner.labels" -}}
helm.sh/chart: {{ include "image-cloner.chart" . }}
{{ include "image-cloner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "image-cloner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-cloner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding IMAGE_CLONER_USER / IMAGE_CLONER_PASS, or "" when there is none. */}}
{{- define "image-cloner.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else if .Values.credentials.username }}
{{- printf "%s-credentials" (include "image-cloner.fullname" .) }}
{{- end }}
{{- end }}

{{/*
IMAGE_CLONER_REGISTRY_MIRRORS from the mirrors map: "host=url" pairs joined by commas,
one pair per mirror, in the order given for each host.
*/}}
{{- define "image-cloner.mirrors" -}}
{{- $pairs := list }}
{{- range $host := keys .Values.mirrors | sortAlpha }}
{{- range $url := get $.Values.mirrors $host }}
{{- $pairs = append $pairs (printf "%s=%s" $host $url) }}
{{- end }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "image-cloner.caMountPath" -}}/etc/image-cloner/ca{{- end }}

{{/*
Where the logins are mounted when they come from files.
*/}}
{{- define "image-cloner.pushMountPath" -}}/etc/image-cloner/push{{- end }}
{{- define "image-cloner.pullMountPath" -}}/etc/image-cloner/pull{{- end }}

{{/*
The label matchers that pick the controller's series in the alerts: by default the job
the ServiceMonitor creates (the metrics Service's name) in the release namespace.
*/}}
{{- define "image-cloner.alertSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (printf "%s-metrics" (include "image-cloner.fullname" .)) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The admission webhook: where its serving certificate is mounted, and which Secret holds it.
*/}}
{{- define "image-cloner.webhookMountPath" -}}/etc/image-cloner/webhook{{- end }}
{{- define "image-cloner.webhookSecret" -}}
{{- .Values.webhook.certSecret | default (printf "%s-webhook-tls" (include "image-cloner.fullname" .)) }}
{{- end }}
