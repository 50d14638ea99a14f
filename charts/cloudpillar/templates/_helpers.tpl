{{/* Names, labels and images shared by every template. */}}

{{- define "cloudpillar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart name. */}}
{{- define "cloudpillar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: (dict "root" $ "component" "operator"). */}}
{{- define "cloudpillar.componentName" -}}
{{- printf "%s-%s" (include "cloudpillar.fullname" .root) .component -}}
{{- end -}}

{{- define "cloudpillar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator"). */}}
{{- define "cloudpillar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudpillar.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects: (dict "root" $ "component" "operator"). */}}
{{- define "cloudpillar.labels" -}}
{{ include "cloudpillar.selectorLabels" . }}
app.kubernetes.io/part-of: cloudpillar
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "cloudpillar.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata.annotations of every object, when commonAnnotations are set. */}}
{{- define "cloudpillar.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* `repository:tag` or `repository@digest` of an image block. */}}
{{- define "cloudpillar.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "cloudpillar.image" -}}
image: {{ include "cloudpillar.imageRef" (dict "root" . "image" .Values.image) | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end -}}

{{- define "cloudpillar.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scheduling fields of a role's pod spec: (dict "role" .Values.operator). */}}
{{- define "cloudpillar.scheduling" -}}
{{- with .role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Environment every cloudpillar process gets. */}}
{{- define "cloudpillar.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* Liveness and readiness on the role's health endpoints (container port `metrics`). */}}
{{- define "cloudpillar.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{/*
A startup probe for a role that opens a large store before it serves anything (the edge hub):
liveness waits until /healthz first answers, up to 5 minutes.
*/}}
{{- define "cloudpillar.startupProbe" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 60
{{- end -}}

{{/* Edge hub endpoints inside the cluster. */}}
{{- define "cloudpillar.hubServiceName" -}}
{{- include "cloudpillar.componentName" (dict "root" . "component" "hub") -}}
{{- end -}}

{{- define "cloudpillar.hubServiceHost" -}}
{{- printf "%s.%s.svc" (include "cloudpillar.hubServiceName" .) .Release.Namespace -}}
{{- end -}}

{{- define "cloudpillar.hubHostname" -}}
{{- default (include "cloudpillar.hubServiceHost" .) .Values.hub.hostname -}}
{{- end -}}

{{- define "cloudpillar.keyholderUrl" -}}
{{- $service := include "cloudpillar.componentName" (dict "root" . "component" "keyholder") -}}
{{- printf "http://%s.%s.svc:%v" $service .Release.Namespace .Values.keyholder.ports.http -}}
{{- end -}}

{{/* The key holder's API token, mounted where the operator and key holder read it. */}}
{{- define "cloudpillar.keyholderTokenFile" -}}
/etc/cloudpillar/keyholder-token/{{ .Values.keyholder.apiToken.key }}
{{- end -}}

{{- define "cloudpillar.keyholderTokenVolume" -}}
- name: keyholder-token
  secret:
    secretName: {{ .Values.keyholder.apiToken.existingSecret }}
    items:
      - key: {{ .Values.keyholder.apiToken.key }}
        path: {{ .Values.keyholder.apiToken.key }}
{{- end -}}

{{/* The metrics container port and the /tmp volume mount every role has. */}}
{{- define "cloudpillar.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "cloudpillar.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}
