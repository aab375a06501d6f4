{{- define "hourglass.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hourglass.fullname" -}}
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

{{- define "hourglass.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hourglass.labels" -}}
helm.sh/chart: {{ include "hourglass.chart" . }}
app.kubernetes.io/name: {{ include "hourglass.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hourglass
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "ingest") */}}
{{- define "hourglass.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hourglass.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hourglass.componentLabels" -}}
{{ include "hourglass.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hourglass.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hourglass.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hourglass.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "hourglass.writeKeysPath" -}}
/etc/hourglass/keys/{{ .Values.secrets.writeKeys.key }}
{{- end }}

{{/*
Every whole number in a dict (and the dicts in it) made an integer, in
place: Helm reads YAML numbers as floats, and toToml writes a large one as
1e+08, which no integer setting accepts.
*/}}
{{- define "hourglass.wholeNumbers" -}}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{- include "hourglass.wholeNumbers" $v }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- $_ := set $ (toString $k) (int64 $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
hourglass.toml: the user's config with the listen addresses (and the write
keys file) the chart owns. Helm holds every number as a float, and toToml
writes 8 as 8.0, which an integer setting refuses; bare whole numbers are
written back as integers (quoted strings are left alone).
*/}}
{{- define "hourglass.configToml" -}}
{{- $cfg := deepCopy (default dict .Values.config) }}
{{- include "hourglass.wholeNumbers" $cfg }}
{{- $metrics := printf "0.0.0.0:%d" (int .Values.metricsPort) }}
{{- $ingest := dict "listen" (printf "0.0.0.0:%d" (int .Values.ingest.port)) }}
{{- /* The replicas that split each project's quotas: under autoscaling the
       most that may run, so the pods together never admit more than a quota. */}}
{{- $replicas := ternary .Values.ingest.autoscaling.maxReplicas .Values.ingest.replicas .Values.ingest.autoscaling.enabled }}
{{- $_ := set $ingest "replicas" (int $replicas) }}
{{- if .Values.secrets.writeKeys.name }}
{{- $_ := set $ingest "keys_file" (include "hourglass.writeKeysPath" .) }}
{{- end }}
{{- $_ := set $cfg "ingest" (merge $ingest (default dict $cfg.ingest)) }}
{{- $_ := set $cfg "aggregator" (merge (dict "http_listen" $metrics) (default dict $cfg.aggregator)) }}
{{- $_ := set $cfg "loader" (merge (dict "http_listen" $metrics) (default dict $cfg.loader)) }}
{{- $_ := set $cfg "lake" (merge (dict "http_listen" $metrics) (default dict $cfg.lake)) }}
{{- $_ := set $cfg "batch" (merge (dict "http_listen" $metrics) (default dict $cfg.batch)) }}
{{- $query := dict "listen" (printf "0.0.0.0:%d" (int .Values.query.port)) }}
{{- with .Values.query.publicKey.secretName }}
{{- $file := printf "/etc/hourglass/jwt/%s" $.Values.query.publicKey.key }}
{{- if eq $.Values.query.publicKey.format "jwks" }}
{{- $_ := set $query "jwt_jwks_file" $file }}
{{- else }}
{{- $_ := set $query "jwt_public_key_file" $file }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "query" (merge $query (default dict $cfg.query)) }}
{{- /* No S3 keys in the config: the binary's defaults are the local stack's
       keys, which would silently win over IRSA or an instance profile. Keys
       come from secrets.s3Credentials (environment) or the AWS chain. */}}
{{- $_ := set $cfg "s3" (merge (dict "access_key_id" "" "secret_access_key" "") (default dict $cfg.s3)) }}
{{- regexReplaceAll "(?m)^(\\s*[A-Za-z0-9_]+ = -?[0-9]+)\\.0$" (toToml $cfg) "${1}" }}
{{- end }}

{{/* Secrets only the query API needs, kept out of the other pods. */}}
{{- define "hourglass.queryEnv" -}}
{{- with .Values.secrets.clickhouseReadPassword.name }}
- name: HOURGLASS_QUERY__READ_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.clickhouseReadPassword.key }}
{{- end }}
{{- with .Values.secrets.jwt.name }}
- name: HOURGLASS_QUERY__JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.jwt.key }}
{{- end }}
{{- end }}

{{/* Environment every component gets: secrets by reference, then extraEnv. */}}
{{- define "hourglass.env" -}}
- name: HOURGLASS_CONFIG
  value: /etc/hourglass/hourglass.toml
{{- with .Values.secrets.clickhousePassword.name }}
- name: HOURGLASS_CLICKHOUSE__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.clickhousePassword.key }}
{{- end }}
{{- with .Values.secrets.s3Credentials.name }}
- name: HOURGLASS_S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.s3Credentials.accessKeyIdKey }}
- name: HOURGLASS_S3__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.s3Credentials.secretAccessKeyKey }}
{{- end }}
{{- with .Values.secrets.kafkaSaslPassword.name }}
- name: HOURGLASS_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.kafkaSaslPassword.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "hourglass.configChecksum" -}}
{{ include "hourglass.configToml" . | sha256sum }}
{{- end }}

{{/* Refuse values that would deploy something broken. */}}
{{- define "hourglass.validate" -}}
{{- $partitions := int (default 1 .Values.config.kafka.partitions) }}
{{- range $c := list "aggregator" "loader" "archiver" }}
{{- $v := index $.Values $c }}
{{- if gt (int $v.replicas) $partitions }}
{{- fail (printf "%s.replicas (%d) exceeds config.kafka.partitions (%d): the extra members would get no partition" $c (int $v.replicas) $partitions) }}
{{- end }}
{{- if and $v.keda.enabled (gt (int $v.keda.maxReplicaCount) $partitions) }}
{{- fail (printf "%s.keda.maxReplicaCount (%d) exceeds config.kafka.partitions (%d)" $c (int $v.keda.maxReplicaCount) $partitions) }}
{{- end }}
{{- end }}
{{- if and .Values.ingest.enabled (not .Values.secrets.writeKeys.name) (not (and .Values.config.ingest .Values.config.ingest.keys)) }}
{{- fail "ingest needs write keys: set secrets.writeKeys.name (a Secret of `project_id sha256` lines) or config.ingest.keys" }}
{{- end }}
{{- if and .Values.query.enabled (not .Values.secrets.jwt.name) (not .Values.query.publicKey.secretName) }}
{{- fail "the query API needs the key its tokens are checked with: secrets.jwt.name (HS256) or query.publicKey.secretName (RS256/ES256)" }}
{{- end }}
{{- if and .Values.archiver.enabled (ne (default "s3" (and .Values.config.lake .Values.config.lake.storage)) "s3") }}
{{- fail "the archiver in a cluster writes to S3: set config.lake.storage to s3 (a local folder would be lost with the pod)" }}
{{- end }}
{{- end }}
