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

{{/* Fully qualified DNS name of a Service of this release: pipeline pods run in another
     namespace (pipelines.namespace), where the short name does not resolve. */}}
{{- define "activedet.fqdn" -}}
{{- printf "%s.%s.svc.%s" .svc .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{- define "activedet.mlflowUrl" -}}
http://{{ include "activedet.fqdn" (dict "svc" (include "activedet.mlflowService" .) "root" .) }}:{{ .Values.mlflow.port }}
{{- end -}}

{{/* Namespace where KFP runs the pipeline pods (and the schedule Job, its ConfigMap and RBAC) */}}
{{- define "activedet.pipelinesNamespace" -}}
{{- .Values.pipelines.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Image of ours: <image.registry>/<name>:<image.tag or appVersion> */}}
{{- define "activedet.image" -}}
{{- printf "%s/%s:%s" (.root.Values.image.registry | trimSuffix "/") .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "activedet.mlflowImage" -}}
{{- if .Values.mlflow.image.repository -}}
{{- printf "%s:%s" .Values.mlflow.image.repository (.Values.mlflow.image.tag | default .Chart.AppVersion) -}}
{{- else -}}
{{- include "activedet.image" (dict "root" . "name" "activedet-mlflow") -}}
{{- end -}}
{{- end -}}

{{/* MLflow artifact root: explicit, else s3://<s3.bucket>/mlflow */}}
{{- define "activedet.artifactRoot" -}}
{{- .Values.mlflow.artifactRoot | default (printf "s3://%s/mlflow" .Values.s3.bucket) -}}
{{- end -}}

{{/* S3 endpoint: explicit value, else the bundled MinIO (fully qualified) when enabled, else AWS */}}
{{- define "activedet.s3Endpoint" -}}
{{- if .Values.s3.endpointUrl -}}
{{ .Values.s3.endpointUrl }}
{{- else if .Values.minio.enabled -}}
http://{{ include "activedet.fqdn" (dict "svc" (include "activedet.minioService" .) "root" .) }}:9000
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

{{/* Restricted Pod Security: pod level (non-root, RuntimeDefault seccomp) */}}
{{- define "activedet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security: container level; every container gets this */}}
{{- define "activedet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "activedet.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Settings shared by the chart's hook Jobs: no sidecar (a Job with an Istio sidecar never
     completes), bounded run time, removed after a day. */}}
{{- define "activedet.hookJobSpec" -}}
backoffLimit: {{ .Values.jobs.backoffLimit }}
activeDeadlineSeconds: {{ .Values.jobs.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ .Values.jobs.ttlSecondsAfterFinished }}
{{- end -}}

{{- define "activedet.hookPodAnnotations" -}}
sidecar.istio.io/inject: "false"
{{- end -}}
