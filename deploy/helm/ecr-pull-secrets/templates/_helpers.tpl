{{- define "ecr-pull-secrets.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ecr-pull-secrets.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ecr-pull-secrets.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ecr-pull-secrets.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ecr-pull-secrets.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ecr-pull-secrets.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ecr-pull-secrets.labels" -}}
{{ include "ecr-pull-secrets.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ecr-pull-secrets
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ecr-pull-secrets.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ecr-pull-secrets.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The credentials Secret's name, or "" for the AWS default chain. */}}
{{- define "ecr-pull-secrets.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret -}}
{{- .Values.credentials.existingSecret -}}
{{- else if .Values.credentials.create -}}
{{- printf "%s-aws" (include "ecr-pull-secrets.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ecr-pull-secrets.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.leaseNamespace -}}
{{- end -}}

{{/* The Secret names the ClusterRole grants: secretName and, with EcrPullSecret resources, theirs. */}}
{{- define "ecr-pull-secrets.secretNames" -}}
{{- $names := list .Values.secretName -}}
{{- if .Values.customResources.enabled -}}
{{- $names = concat $names .Values.customResources.secretNames -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}

{{/* The credentials Secrets the Role grants, as a JSON list (empty: no Role). */}}
{{- define "ecr-pull-secrets.credentialsSecrets" -}}
{{- $names := list -}}
{{- with include "ecr-pull-secrets.credentialsSecret" . -}}
{{- $names = append $names . -}}
{{- end -}}
{{- if .Values.customResources.enabled -}}
{{- $names = concat $names .Values.customResources.credentialsSecrets -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}
