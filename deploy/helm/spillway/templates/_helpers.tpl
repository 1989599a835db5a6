{{/*
Names and labels shared by every template. The defaults reproduce deploy/'s names: release
`spillway` gives fullname `spillway`.
*/}}

{{/* The app name, `app.kubernetes.io/name` (the pods' selector). */}}
{{- define "spillway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name. */}}
{{- define "spillway.fullname" -}}
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
Labels of every object: deploy/'s `app.kubernetes.io/name` plus Helm's usual ones.
*/}}
{{- define "spillway.labels" -}}
{{ include "spillway.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The pods' selector: the app name alone, as deploy/ selects them, so a Deployment installed
with kustomize can be taken over by the chart (a Deployment's selector cannot change).
*/}}
{{- define "spillway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spillway.name" . }}
{{- end }}

{{/* The port of the metrics API (HTTPS; plain HTTP answers only health). */}}
{{- define "spillway.apiPort" -}}6443{{- end }}

{{/* The Secret holding the serving certificate. */}}
{{- define "spillway.servingSecret" -}}
{{- default (printf "%s-serving" (include "spillway.fullname" .)) .Values.servingCert.secretName }}
{{- end }}

{{/*
How kube-apiserver comes to trust the serving certificate, for the APIServices and the
webhook: cert-manager's cainjector fills their caBundle from the CA Certificate this names
(source cert-manager), or the chart sets the given CA (source secret).
*/}}
{{- define "spillway.injectCaFrom" -}}
{{ .Release.Namespace }}/{{ include "spillway.fullname" . }}-ca
{{- end }}
