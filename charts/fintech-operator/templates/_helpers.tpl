{{/*
Names, labels and the pieces every process shares. Components: operator, rewards, notifier,
gateway, postgresql, kafka, test.
*/}}

{{- define "fintech.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fintech.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component>, within 63 characters. */}}
{{- define "fintech.component.fullname" -}}
{{- printf "%s-%s" (include "fintech.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "fintech.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fintech.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fintech.labels" -}}
{{ include "fintech.selectorLabels" . }}
app.kubernetes.io/part-of: fintech-operator
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The image reference: a digest wins over a tag; the tag defaults to appVersion. */}}
{{- define "fintech.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "fintech.serviceAccountName" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.serviceAccount.create -}}
{{- default (include "fintech.component.fullname" .) $values.serviceAccount.name -}}
{{- else -}}
{{- default "default" $values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fintech.peeringName" -}}
{{- default (include "fintech.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{- define "fintech.postgresql.secretName" -}}
{{- default (include "fintech.component.fullname" (dict "root" . "component" "postgresql")) .Values.postgresql.auth.existingSecret -}}
{{- end -}}

{{/*
The namespaces the default CardProduct and policies go to: defaults.namespaces, else the
watched namespaces (namespace scope), else the release namespace.
*/}}
{{- define "fintech.defaultsNamespaces" -}}
{{- $fallback := list .Release.Namespace -}}
{{- if eq .Values.rbac.scope "namespace" -}}
{{- $fallback = .Values.watchNamespaces -}}
{{- end -}}
{{- toJson (.Values.defaults.namespaces | default $fallback) -}}
{{- end -}}

{{/*
The Kinds (plural resource names) of every fintech.dev CRD the chart ships, read from
crds/fintech/: RBAC and the default policies follow the CRDs, so a new kind needs no chart edit.
*/}}
{{- define "fintech.crdPlurals" -}}
{{- $plurals := list -}}
{{- range $path, $_ := .Files.Glob "crds/fintech/*.yaml" -}}
{{- $crd := $.Files.Get $path | fromYaml -}}
{{- if eq $crd.spec.group "fintech.dev" -}}
{{- $plurals = append $plurals $crd.spec.names.plural -}}
{{- end -}}
{{- end -}}
{{- toJson (sortAlpha $plurals) -}}
{{- end -}}

{{/* Fails the render when the chart does not ship the CRD of a kind it is asked to create. */}}
{{- define "fintech.requireKind" -}}
{{- $plurals := include "fintech.crdPlurals" .root | fromJsonArray -}}
{{- if not (has .plural $plurals) -}}
{{- fail (printf "%s is enabled but this chart ships no CRD for %s (crds/fintech/%s.fintech.dev.yaml); disable it or upgrade the chart" .value .plural .plural) -}}
{{- end -}}
{{- end -}}

{{- define "fintech.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- $host := include "fintech.component.fullname" (dict "root" . "component" "postgresql") -}}
{{- printf "postgresql://%s@%s.%s.svc:%d/%s" .Values.postgresql.auth.username $host .Release.Namespace (int .Values.postgresql.port) .Values.postgresql.auth.database -}}
{{- else -}}
{{- .Values.externalDatabase.url -}}
{{- end -}}
{{- end -}}

{{- define "fintech.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{- $host := include "fintech.component.fullname" (dict "root" . "component" "kafka") -}}
{{- printf "%s.%s.svc:%d" $host .Release.Namespace (int .Values.kafka.port) -}}
{{- else -}}
{{- .Values.externalKafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{/*
The environment of the three processes: where the ledger and Kafka are, the password as
PGPASSWORD (libpq reads it, so it never appears in a URL), settings, metrics and tracing.
*/}}
{{- define "fintech.env" -}}
{{- $root := .root -}}
- name: DATABASE_URL
  value: {{ include "fintech.databaseUrl" $root | quote }}
{{- if $root.Values.postgresql.enabled }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fintech.postgresql.secretName" $root }}
      key: {{ $root.Values.postgresql.auth.passwordKey }}
{{- else if $root.Values.externalDatabase.existingSecret }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.externalDatabase.existingSecret }}
      key: {{ $root.Values.externalDatabase.passwordKey }}
{{- end }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ include "fintech.kafkaBootstrap" $root | quote }}
{{- include "fintech.kafkaSecurityEnv" $root }}
{{- range $key, $value := $root.Values.config }}
- name: {{ printf "FINTECH_%s" ($key | snakecase | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
# Probes and /metrics listen on every interface of the pod (the default is loopback).
- name: FINTECH_HEALTH_HOST
  value: "0.0.0.0"
{{- if $root.Values.metrics.enabled }}
- name: FINTECH_METRICS_PORT
  value: {{ $root.Values.metrics.port | toString | quote }}
{{- end }}
{{- if $root.Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $root.Values.tracing.otlpEndpoint | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "fintech-%s" .component | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The operator's extra environment: the owner's credentials for migrations and grants. Only the
operator migrates, so only its pods ever hold them.
*/}}
{{- define "fintech.migrationEnv" -}}
{{- $db := .Values.externalDatabase -}}
{{- if and (not .Values.postgresql.enabled) $db.migration.url }}
- name: FINTECH_MIGRATION_DATABASE_URL
  value: {{ $db.migration.url | quote }}
{{- if $db.migration.existingSecret }}
- name: FINTECH_MIGRATION_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $db.migration.existingSecret }}
      key: {{ $db.migration.passwordKey }}
{{- end }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) $db.runtimeRole }}
- name: FINTECH_DATABASE_RUNTIME_ROLE
  value: {{ $db.runtimeRole | quote }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) .Values.gateway.enabled .Values.gateway.database.role }}
- name: FINTECH_DATABASE_GATEWAY_ROLE
  value: {{ .Values.gateway.database.role | quote }}
{{- end }}
{{- with .Values.tokenizer }}
{{- if .url }}
- name: FINTECH_TOKENIZER_URL
  value: {{ .url | quote }}
- name: FINTECH_TOKENIZER_TOKEN_FILE
  value: {{ printf "/etc/fintech/tokenizer/%s" .credentialSecret.key | quote }}
- name: FINTECH_TOKENIZER_TIMEOUT_SECONDS
  value: {{ .timeoutSeconds | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "fintech.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "fintech.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* Scheduling knobs of one component's values. */}}
{{- define "fintech.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The ports every process exposes for metrics. */}}
{{- define "fintech.metricsPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/*
Kafka TLS and SASL for an external cluster: settings as environment, secrets as files. A new
Kafka client reads them again, but the long-lived ones keep what they started with: restart
the pods after rotating a password or CA (docs/operations.md).
*/}}
{{- define "fintech.kafkaSecurity" -}}
{{- if not .Values.kafka.enabled -}}
{{- toJson .Values.externalKafka.security -}}
{{- else -}}
{{- toJson (dict "protocol" "PLAINTEXT" "saslMechanism" "" "passwordSecret" (dict "name" "") "tlsSecret" (dict "name" "")) -}}
{{- end -}}
{{- end -}}

{{- define "fintech.kafkaSecurityEnv" -}}
{{- $sec := include "fintech.kafkaSecurity" . | fromJson -}}
{{- if ne $sec.protocol "PLAINTEXT" }}
- name: FINTECH_KAFKA_SECURITY_PROTOCOL
  value: {{ $sec.protocol | quote }}
{{- end }}
{{- if $sec.saslMechanism }}
- name: FINTECH_KAFKA_SASL_MECHANISM
  value: {{ $sec.saslMechanism | quote }}
- name: FINTECH_KAFKA_SASL_USERNAME
  value: {{ $sec.username | quote }}
- name: FINTECH_KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "/etc/fintech/kafka-sasl/%s" $sec.passwordSecret.key | quote }}
{{- end }}
{{- if and $sec.tlsSecret.name $sec.tlsSecret.caKey }}
- name: FINTECH_KAFKA_SSL_CA_FILE
  value: {{ printf "/etc/fintech/kafka-tls/%s" $sec.tlsSecret.caKey | quote }}
{{- end }}
{{- if $sec.tlsSecret.name }}
{{- if $sec.tlsSecret.certKey }}
- name: FINTECH_KAFKA_SSL_CERT_FILE
  value: {{ printf "/etc/fintech/kafka-tls/%s" $sec.tlsSecret.certKey | quote }}
- name: FINTECH_KAFKA_SSL_KEY_FILE
  value: {{ printf "/etc/fintech/kafka-tls/%s" $sec.tlsSecret.keyKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "fintech.kafkaSecurityMounts" -}}
{{- $sec := include "fintech.kafkaSecurity" . | fromJson -}}
{{- if $sec.saslMechanism }}
- name: kafka-sasl
  mountPath: /etc/fintech/kafka-sasl
  readOnly: true
{{- end }}
{{- if $sec.tlsSecret.name }}
- name: kafka-tls
  mountPath: /etc/fintech/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "fintech.kafkaSecurityVolumes" -}}
{{- $sec := include "fintech.kafkaSecurity" . | fromJson -}}
{{- if $sec.saslMechanism }}
- name: kafka-sasl
  secret:
    secretName: {{ $sec.passwordSecret.name }}
    defaultMode: 0440
{{- end }}
{{- if $sec.tlsSecret.name }}
- name: kafka-tls
  secret:
    secretName: {{ $sec.tlsSecret.name }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "fintech.gateway.signingSecretName" -}}
{{- default (printf "%s-signing" (include "fintech.component.fullname" (dict "root" . "component" "gateway"))) .Values.gateway.signing.existingSecret -}}
{{- end -}}

{{/*
The gateway's environment: its own database role when one is given, its limits, the signing
secret as a file. No Kafka and no `config` settings: the gateway reads only its own
(fintech_operator/gateway/settings.py).
*/}}
{{- define "fintech.gateway.env" -}}
{{- $gw := .Values.gateway -}}
{{- if and (not .Values.postgresql.enabled) $gw.database.url }}
- name: DATABASE_URL
  value: {{ $gw.database.url | quote }}
{{- if $gw.database.existingSecret }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $gw.database.existingSecret }}
      key: {{ $gw.database.passwordKey }}
{{- end }}
{{- else }}
- name: DATABASE_URL
  value: {{ include "fintech.databaseUrl" . | quote }}
{{- if .Values.postgresql.enabled }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fintech.postgresql.secretName" . }}
      key: {{ .Values.postgresql.auth.passwordKey }}
{{- else if .Values.externalDatabase.existingSecret }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.passwordKey }}
{{- end }}
{{- end }}
- name: FINTECH_GATEWAY_HOST
  value: "0.0.0.0"
- name: FINTECH_GATEWAY_PORT
  value: {{ $gw.port | toString | quote }}
- name: FINTECH_GATEWAY_DEADLINE_MS
  value: {{ $gw.deadlineMs | toString | quote }}
- name: FINTECH_GATEWAY_IN_FLIGHT_MAX
  value: {{ $gw.inFlightMax | toString | quote }}
- name: FINTECH_GATEWAY_QUEUE_MAX
  value: {{ $gw.queueMax | toString | quote }}
{{- if not (kindIs "invalid" $gw.queueWaitMs) }}
- name: FINTECH_GATEWAY_QUEUE_WAIT_MS
  value: {{ $gw.queueWaitMs | toString | quote }}
{{- end }}
- name: FINTECH_GATEWAY_BODY_BYTES_MAX
  value: {{ $gw.bodyBytesMax | toString | quote }}
- name: FINTECH_GATEWAY_DB_POOL_MAX_SIZE
  value: {{ $gw.dbPoolMaxSize | toString | quote }}
- name: FINTECH_GATEWAY_DB_POOL_MIN_SIZE
  value: {{ min 4 $gw.dbPoolMaxSize | toString | quote }}
- name: FINTECH_GATEWAY_SIGNING_SECRET_FILE
  value: {{ printf "/etc/fintech/gateway-signing/%s" $gw.signing.key | quote }}
- name: FINTECH_GATEWAY_WORKERS
  value: {{ $gw.workers | toString | quote }}
{{- if $gw.tls.secretName }}
- name: FINTECH_GATEWAY_TLS_CERT_FILE
  value: "/etc/fintech/gateway-tls/tls.crt"
- name: FINTECH_GATEWAY_TLS_KEY_FILE
  value: "/etc/fintech/gateway-tls/tls.key"
{{- end }}
{{- if $gw.tls.clientCA.secretName }}
- name: FINTECH_GATEWAY_TLS_CLIENT_CA_FILE
  value: {{ printf "/etc/fintech/gateway-client-ca/%s" $gw.tls.clientCA.key | quote }}
{{- end }}
- name: FINTECH_HEALTH_HOST
  value: "0.0.0.0"
{{- if .Values.metrics.enabled }}
- name: FINTECH_METRICS_PORT
  value: {{ .Values.metrics.port | toString | quote }}
{{- end }}
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: "fintech-gateway"
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
