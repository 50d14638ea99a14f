{{/* Arguments, volumes and environment the backend roles share. */}}

{{/* Blob storage arguments (operator, streamer, key holder, writer). */}}
{{- define "cloudpillar.blobArgs" -}}
{{- $f := .Values.cli.flags -}}
{{- if eq .Values.blob.backend "filesystem" }}
- {{ $f.blobDir }}=/var/lib/cloudpillar/blobs
{{- else }}
- {{ $f.azureAccount }}={{ .Values.blob.azure.account }}
{{- with .Values.blob.azure.endpoint }}
- {{ $f.azureEndpoint }}={{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Azure storage account key from its Secret, when one is named. */}}
{{- define "cloudpillar.blobEnv" -}}
{{- if and (eq .Values.blob.backend "azure") .Values.blob.azure.existingSecret -}}
- name: {{ .Values.cli.env.azureStorageKey }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.blob.azure.existingSecret }}
      key: {{ .Values.blob.azure.key }}
{{- end -}}
{{- end -}}

{{- define "cloudpillar.blobClaimName" -}}
{{- $created := include "cloudpillar.componentName" (dict "root" . "component" "blobs") -}}
{{- default $created .Values.blob.filesystem.existingClaim -}}
{{- end -}}

{{- define "cloudpillar.blobVolumes" -}}
{{- if eq .Values.blob.backend "filesystem" }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "cloudpillar.blobClaimName" . }}
{{- end }}
{{- end -}}

{{- define "cloudpillar.blobMounts" -}}
{{- if eq .Values.blob.backend "filesystem" }}
- name: blobs
  mountPath: /var/lib/cloudpillar/blobs
{{- end }}
{{- end -}}

{{/* The edge hub's service API as the streamer and writer reach it. */}}
{{- define "cloudpillar.hubLinkArgs" -}}
{{- $f := .Values.cli.flags -}}
- {{ $f.hubUrl }}=https://{{ include "cloudpillar.hubServiceHost" . }}:{{ .Values.hub.ports.https }}
- {{ $f.hubHostname }}={{ include "cloudpillar.hubHostname" . }}
- {{ $f.hubPolicyName }}={{ .Values.hub.policy.name }}
- {{ $f.hubPolicyKeyFile }}=/etc/cloudpillar/hub-policy/{{ .Values.hub.policy.key }}
- {{ $f.hubCaFile }}=/etc/cloudpillar/hub-ca/ca.crt
{{- end -}}

{{- define "cloudpillar.hubLinkVolumes" -}}
- name: hub-policy
  secret:
    secretName: {{ .Values.hub.policy.existingSecret }}
    items:
      - key: {{ .Values.hub.policy.key }}
        path: {{ .Values.hub.policy.key }}
- name: hub-ca
  secret:
    secretName: {{ .Values.hub.tls.existingSecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end -}}

{{- define "cloudpillar.hubLinkMounts" -}}
- name: hub-policy
  mountPath: /etc/cloudpillar/hub-policy
  readOnly: true
- name: hub-ca
  mountPath: /etc/cloudpillar/hub-ca
  readOnly: true
{{- end -}}

{{/* MongoDB connection string from its Secret (streamer and writer), when one is named. */}}
{{- define "cloudpillar.mongodbEnv" -}}
{{- if .Values.mongodb.existingSecret -}}
- name: {{ .Values.cli.env.mongodbUrl }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mongodb.existingSecret }}
      key: {{ .Values.mongodb.key }}
{{- end -}}
{{- end -}}

{{/*
One partition of a partitioned role (streamer, writer): a Deployment of exactly one pod.
(dict "root" $ "component" "streamer" "role" .Values.streamer "index" 0)
*/}}
{{- define "cloudpillar.partitionedDeployment" -}}
{{- $root := .root -}}
{{- $role := .role -}}
{{- $f := $root.Values.cli.flags -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $name := printf "%s-%d" (include "cloudpillar.componentName" $ctx) (int .index) -}}
{{- /* The streamer has devices' uploads signed by the key holder (RunDiagnostics). */ -}}
{{- $signs := and (eq .component "streamer") $root.Values.keyholder.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cloudpillar.labels" $ctx | nindent 4 }}
    cloudpillar.io/partition: {{ .index | quote }}
  {{- with include "cloudpillar.annotations" $root | trim }}{{ . | nindent 2 }}{{ end }}
spec:
  # Exactly one pod per partition: the old pod stops before the new one starts.
  replicas: 1
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "cloudpillar.selectorLabels" $ctx | nindent 6 }}
      cloudpillar.io/partition: {{ .index | quote }}
  template:
    metadata:
      labels:
        {{- include "cloudpillar.selectorLabels" $ctx | nindent 8 }}
        cloudpillar.io/partition: {{ .index | quote }}
        {{- with $role.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $role.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "cloudpillar.componentName" $ctx }}
      automountServiceAccountToken: false
      {{- with include "cloudpillar.imagePullSecrets" $root | trim }}{{ . | nindent 6 }}{{ end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with include "cloudpillar.scheduling" (dict "role" $role) | trim }}{{ . | nindent 6 }}{{ end }}
      containers:
        - name: {{ .component }}
          {{- include "cloudpillar.image" $root | nindent 10 }}
          args:
            - {{ get $root.Values.cli.commands .component }}
            - {{ $f.metrics }}=0.0.0.0:{{ $role.ports.metrics }}
            - {{ $f.partitionIndex }}={{ .index }}
            - {{ $f.partitionCount }}={{ $role.partitions }}
            {{- include "cloudpillar.hubLinkArgs" $root | nindent 12 }}
            {{- with include "cloudpillar.blobArgs" $root | trim }}{{ . | nindent 12 }}{{ end }}
            {{- if $root.Values.mongodb.existingSecret }}
            - {{ $f.mongodbDatabase }}={{ $root.Values.mongodb.database }}
            {{- end }}
            {{- if $signs }}
            - {{ $f.keyholderUrl }}={{ include "cloudpillar.keyholderUrl" $root }}
            - {{ $f.keyholderTokenFile }}={{ include "cloudpillar.keyholderTokenFile" $root }}
            {{- end }}
            {{- with $role.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            {{- include "cloudpillar.commonEnv" $root | nindent 12 }}
            {{- with include "cloudpillar.mongodbEnv" $root | trim }}{{ . | nindent 12 }}{{ end }}
            {{- with include "cloudpillar.blobEnv" $root | trim }}{{ . | nindent 12 }}{{ end }}
            {{- with $role.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $role.ports.metrics }}
              protocol: TCP
          {{- include "cloudpillar.probes" $root | nindent 10 }}
          resources:
            {{- toYaml $role.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "cloudpillar.tmpMount" $root | nindent 12 }}
            {{- include "cloudpillar.hubLinkMounts" $root | nindent 12 }}
            {{- with include "cloudpillar.blobMounts" $root | trim }}{{ . | nindent 12 }}{{ end }}
            {{- if $signs }}
            - name: keyholder-token
              mountPath: /etc/cloudpillar/keyholder-token
              readOnly: true
            {{- end }}
      volumes:
        {{- include "cloudpillar.tmpVolume" $root | nindent 8 }}
        {{- include "cloudpillar.hubLinkVolumes" $root | nindent 8 }}
        {{- with include "cloudpillar.blobVolumes" $root | trim }}{{ . | nindent 8 }}{{ end }}
        {{- if $signs }}
        {{- include "cloudpillar.keyholderTokenVolume" $root | nindent 8 }}
        {{- end }}
{{- end -}}

{{/*
A ServiceAccount without API access and a metrics Service for a backend role.
(dict "root" $ "component" "streamer" "role" .Values.streamer "automount" false)
*/}}
{{- define "cloudpillar.serviceAccount" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "cloudpillar.componentName" $ctx }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "cloudpillar.labels" $ctx | nindent 4 }}
  {{- $own := .role.serviceAccount.annotations | default dict }}
  {{- $annotations := merge (dict) $own (.root.Values.commonAnnotations | default dict) }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ .automount }}
{{- end -}}

{{/* (dict "root" $ "component" "streamer" "ports" (list (dict "name" "metrics" "port" 8080))) */}}
{{- define "cloudpillar.metricsService" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cloudpillar.componentName" $ctx }}-metrics
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "cloudpillar.labels" $ctx | nindent 4 }}
    cloudpillar.io/metrics: "true"
  {{- with include "cloudpillar.annotations" .root | trim }}{{ . | nindent 2 }}{{ end }}
spec:
  type: ClusterIP
  selector:
    {{- include "cloudpillar.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: metrics
      port: {{ .port }}
      targetPort: metrics
      protocol: TCP
{{- end -}}
