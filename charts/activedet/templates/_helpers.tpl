{{- define "activedet.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "activedet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "activedet.mlflowService" -}}
{{- printf "%s-mlflow" (include "activedet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "activedet.minioService" -}}
{{- printf "%s-minio" (include "activedet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* S3 endpoint: explicit value, else the bundled MinIO when enabled, else AWS */}}
{{- define "activedet.s3Endpoint" -}}
{{- if .Values.s3.endpointUrl -}}
{{ .Values.s3.endpointUrl }}
{{- else if .Values.minio.enabled -}}
http://{{ include "activedet.minioService" . }}:9000
{{- end -}}
{{- end -}}

{{/* S3 credentials as env vars from the referenced Secret (values never appear in the chart) */}}
{{- define "activedet.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentialsSecret.name }}
      key: {{ .Values.s3.credentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentialsSecret.name }}
      key: {{ .Values.s3.credentialsSecret.secretAccessKeyKey }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | default "us-east-1" | quote }}
{{- with include "activedet.s3Endpoint" . }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}
