{{/* Chart name, overridable. */}}
{{- define "broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "broker.fullname" -}}
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

{{- define "broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "broker.labels" -}}
helm.sh/chart: {{ include "broker.chart" . }}
app.kubernetes.io/name: {{ include "broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: claudemesh
{{- end }}

{{/* Selector of the broker pods (not the migrator's). */}}
{{- define "broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "broker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the brokers read DATABASE_URL, REDIS_URL and BROKER_ADMIN_TOKEN from. */}}
{{- define "broker.secretName" -}}
{{- default (include "broker.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* The Secret holding the object store's access keys: its own, else the release's. */}}
{{- define "broker.filesS3SecretName" -}}
{{- default (include "broker.secretName" .) .Values.filesS3.credentials.existingSecret }}
{{- end }}

{{/* Ingress controller flavour: nginx, traefik or "" (no controller-specific annotations). */}}
{{- define "broker.ingressController" -}}
{{- if .Values.ingress.controller }}
{{- .Values.ingress.controller }}
{{- else if contains "nginx" (default "" .Values.ingress.className) }}
{{- "nginx" }}
{{- else if contains "traefik" (default "" .Values.ingress.className) }}
{{- "traefik" }}
{{- end }}
{{- end }}

{{/* The admin token of the chart-created Secret: given, else the one already installed, else new. */}}
{{- define "broker.adminToken" -}}
{{- if .Values.secret.adminToken }}
{{- .Values.secret.adminToken }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "broker.fullname" .) }}
{{- $data := dig "data" (dict) $existing }}
{{- if hasKey $data .Values.secret.keys.adminToken }}
{{- index $data .Values.secret.keys.adminToken | b64dec }}
{{- else }}
{{- randAlphaNum 40 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The session secret of the chart-created Secret: given, else the one already installed, else new. */}}
{{- define "broker.sessionSecret" -}}
{{- if .Values.secret.sessionSecret }}
{{- .Values.secret.sessionSecret }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "broker.fullname" .) }}
{{- $data := dig "data" (dict) $existing }}
{{- if hasKey $data .Values.secret.keys.sessionSecret }}
{{- index $data .Values.secret.keys.sessionSecret | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuses inconsistent values with a message naming the key. Included by the Deployment. */}}
{{- define "broker.validate" -}}
{{- if not .Values.secret.existingSecret }}
{{- if not .Values.secret.databaseUrl }}
{{- fail "secret.databaseUrl is required (or set secret.existingSecret)" }}
{{- end }}
{{- if not .Values.secret.redisUrl }}
{{- fail "secret.redisUrl is required (or set secret.existingSecret): the chart runs cluster mode" }}
{{- end }}
{{- end }}
{{- if gt (int .Values.shutdown.drainMs) (int .Values.shutdown.deadlineMs) }}
{{- fail "shutdown.drainMs must not exceed shutdown.deadlineMs" }}
{{- end }}
{{- range $key, $_ := .Values.config }}
{{- if has $key (list "BROKER_HOST" "BROKER_PORT" "BROKER_NODE_ID" "BROKER_ADMIN_TOKEN" "BROKER_SESSION_SECRET" "DATABASE_URL" "REDIS_URL" "SHUTDOWN_DRAIN_MS" "SHUTDOWN_DEADLINE_MS" "BROKER_INTERNAL_PORT" "BROKER_INTERNAL_HOST" "BROKER_PUBLIC_URL" "FILES_S3_ENDPOINT" "FILES_S3_BUCKET" "FILES_S3_REGION" "FILES_S3_ACCESS_KEY_ID" "FILES_S3_SECRET_ACCESS_KEY" "FILES_S3_PATH_STYLE" "FILES_S3_PRESIGN" "FILES_S3_PREFIX") }}
{{- fail (printf "config.%s is set by the chart (see values.yaml: secret, shutdown, internal, publicUrl, filesS3)" $key) }}
{{- end }}
{{- end }}
{{- with .Values.filesS3 }}
{{- if .enabled }}
{{- if not (or (hasPrefix "http://" .endpoint) (hasPrefix "https://" .endpoint)) }}
{{- fail "filesS3.endpoint must be an http:// or https:// URL when filesS3.enabled" }}
{{- end }}
{{- if not .bucket }}
{{- fail "filesS3.bucket is required when filesS3.enabled" }}
{{- end }}
{{- if and (not $.Values.secret.existingSecret) (not .credentials.existingSecret) (or (not .credentials.accessKeyId) (not .credentials.secretAccessKey)) }}
{{- fail "filesS3.credentials.accessKeyId and secretAccessKey are required for the chart-created Secret (or set filesS3.credentials.existingSecret or secret.existingSecret)" }}
{{- end }}
{{- end }}
{{- end }}
{{- $controller := include "broker.ingressController" . }}
{{- if and .Values.ingress.enabled (not (has $controller (list "" "nginx" "traefik"))) }}
{{- fail "ingress.controller must be nginx, traefik or empty" }}
{{- end }}
{{- if eq (int .Values.internal.port) 7900 }}
{{- fail "internal.port must differ from the public port 7900" }}
{{- end }}
{{- with .Values.publicUrl }}
{{- if not (or (hasPrefix "http://" .) (hasPrefix "https://" .)) }}
{{- fail "publicUrl must be an http:// or https:// URL" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.connections.enabled) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or connections.enabled" }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + ceil(deadline) + margin. */}}
{{- define "broker.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdown.preStopSleepSeconds) (div (add (int .Values.shutdown.deadlineMs) 999) 1000) (int .Values.shutdown.extraGraceSeconds) }}
{{- end }}

{{/* BROKER_PUBLIC_URL: publicUrl, else the first Ingress host (https:// when a TLS block names it), else empty. */}}
{{- define "broker.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $tls := false }}
{{- range .Values.ingress.tls }}
{{- if has $host (default (list) .hosts) }}
{{- $tls = true }}
{{- end }}
{{- end }}
{{- if $host }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- end }}
{{- end }}
{{- end }}
