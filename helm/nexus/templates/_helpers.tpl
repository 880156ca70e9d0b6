{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "nexus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped prefix; kept short so "<fullname>-receiver-<shard>" stays a DNS label. */}}
{{- define "nexus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nexus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nexus.labels" -}}
helm.sh/chart: {{ include "nexus.chart" . }}
app.kubernetes.io/name: {{ include "nexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexus
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "scheduler" ["shard" name]). */}}
{{- define "nexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexus.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .shard }}
nexus.sneaksanddata.com/shard: {{ .shard }}
{{- end }}
{{- end -}}

{{- define "nexus.componentLabels" -}}
{{ include "nexus.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- if .shard }}
nexus.sneaksanddata.com/shard: {{ .shard }}
{{- end }}
{{- end -}}

{{- define "nexus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "nexus.secretName" -}}
{{- default (printf "%s-secrets" (include "nexus.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "nexus.serviceAccount" -}}
{{- printf "%s-%s" (include "nexus.fullname" .ctx) .component -}}
{{- end -}}

{{/* URLs ------------------------------------------------------------------------------------- */}}

{{/* Scheme of the receivers' gRPC link (grpc.tls). */}}
{{- define "nexus.scheme" -}}
{{- if .Values.grpc.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* Scheme of the HTTP listeners (tls): the v1 API, payload URLs, completion calls. */}}
{{- define "nexus.httpScheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* The ConfigMap algorithm Jobs read the CA from (empty: none). */}}
{{- define "nexus.algorithmCaConfigMap" -}}
{{- $a := .Values.tls.algorithmCa -}}
{{- if and $a.pem $a.configMap -}}
{{- fail "tls.algorithmCa: set pem or configMap, not both" -}}
{{- end -}}
{{- if $a.pem -}}
{{- printf "%s-ca" (include "nexus.fullname" .) -}}
{{- else -}}
{{- $a.configMap -}}
{{- end -}}
{{- end -}}

{{- define "nexus.schedulerService" -}}
{{- printf "%s-scheduler" (include "nexus.fullname" .) -}}
{{- end -}}

{{/* The schedulers' in-cluster URL (never loopback). */}}
{{- define "nexus.schedulerUrl" -}}
{{- if .Values.schedulerUrl -}}
{{- .Values.schedulerUrl -}}
{{- else if .Values.scheduler.enabled -}}
{{- printf "%s://%s.%s.svc.cluster.local:%d" (include "nexus.httpScheme" .) (include "nexus.schedulerService" .) .Release.Namespace (int .Values.scheduler.port) -}}
{{- else -}}
{{- fail "schedulerUrl: required when scheduler.enabled is false (the controller cluster's scheduler URL)" -}}
{{- end -}}
{{- end -}}

{{- define "nexus.schedulerPublicUrl" -}}
{{- default (include "nexus.schedulerUrl" .) .Values.scheduler.publicUrl -}}
{{- end -}}

{{/* Headless Service of one shard's receivers: (dict "ctx" $ "shard" $shard). */}}
{{- define "nexus.receiverService" -}}
{{- printf "%s-receiver-%s" (include "nexus.fullname" .ctx) .shard.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nexus.receiverHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "nexus.receiverService" .) .ctx.Release.Namespace -}}
{{- end -}}

{{/* What Jobs use to report completions: the shard's Service DNS name, not the pod's address. */}}
{{- define "nexus.receiverPublicUrl" -}}
{{- printf "%s://%s:%d" (include "nexus.httpScheme" .ctx) (include "nexus.receiverHost" .) (int .ctx.Values.receiver.httpPort) -}}
{{- end -}}

{{- define "nexus.runsNamespace" -}}
{{- default .ctx.Release.Namespace .shard.runsNamespace -}}
{{- end -}}

{{- define "nexus.catalogNamespace" -}}
{{- default .Release.Namespace .Values.catalog.namespace -}}
{{- end -}}

{{- define "nexus.leaseNamespace" -}}
{{- default .Release.Namespace .Values.supervisor.leaseNamespace -}}
{{- end -}}

{{/* Local shards: the ones whose receivers this release runs. */}}
{{- define "nexus.hasLocalShards" -}}
{{- range .Values.shards }}{{ if not .endpoints }}true{{ end }}{{ end -}}
{{- end -}}

{{/* Config ----------------------------------------------------------------------------------- */}}

{{/* shards: name -> endpoints, for the scheduler and the supervisor. */}}
{{- define "nexus.shardsConfig" -}}
{{- $out := dict -}}
{{- range .Values.shards -}}
{{- if .endpoints -}}
{{- $_ := set $out .name (dict "endpoints" .endpoints) -}}
{{- else -}}
{{- $url := printf "%s://%s:%d" (include "nexus.scheme" $) (include "nexus.receiverHost" (dict "ctx" $ "shard" .)) (int $.Values.receiver.grpcPort) -}}
{{- $_ := set $out .name (dict "endpoints" (list $url)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "nexus.grpcConfig" -}}
{{- $g := dict "auth" .Values.grpc.auth -}}
{{- if eq .Values.grpc.auth "shared-secret" -}}
{{- $_ := set $g "secret_file" "/etc/nexus/secrets/grpc.secret" -}}
{{- end -}}
{{- if .Values.grpc.tls.enabled -}}
{{- $_ := set $g "tls_ca" "/etc/nexus/tls/ca.crt" -}}
{{- $_ := set $g "tls_cert" "/etc/nexus/tls/tls.crt" -}}
{{- $_ := set $g "tls_key" "/etc/nexus/tls/tls.key" -}}
{{- with .Values.grpc.tls.serverName }}{{ $_ := set $g "tls_server_name" . }}{{ end -}}
{{- else if eq .Values.grpc.auth "mtls" -}}
{{- fail "grpc.auth: mtls needs grpc.tls.enabled: true and grpc.tls.secretName" -}}
{{- end -}}
{{- toYaml $g -}}
{{- end -}}

{{- define "nexus.commonConfig" -}}
{{- $c := dict "store" (required "store: the Cassandra run store URL (cassandra://host:9042/keyspace) is required" .Values.store) "log_format" .Values.logFormat "signing_key_file" "/etc/nexus/secrets/signing.key" "grpc" (include "nexus.grpcConfig" . | fromYaml) -}}
{{- $srv := dict "shutdown_delay" .Values.shutdownDelay -}}
{{- $_ := set $c "server" $srv -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $srv "tls" (dict "cert_file" "/etc/nexus/http-tls/tls.crt" "key_file" "/etc/nexus/http-tls/tls.key") -}}
{{- else if (include "nexus.algorithmCaConfigMap" .) -}}
{{- fail "tls.algorithmCa: only with tls.enabled (algorithms trust the CA of the HTTP listeners' certificate)" -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{- define "nexus.catalogConfig" -}}
{{- $c := dict "catalog" .Values.catalog.source "reload_interval" .Values.catalog.reloadInterval "templates_dir" "/etc/nexus/templates" "kubernetes" (dict "namespace" (include "nexus.catalogNamespace" .) "api_budget" .Values.kubeApiBudget) -}}
{{- toYaml $c -}}
{{- end -}}

{{- define "nexus.schedulerConfig" -}}
{{- $c := include "nexus.commonConfig" . | fromYaml -}}
{{- $c = mustMergeOverwrite $c (include "nexus.catalogConfig" . | fromYaml) -}}
{{- $_ := set $c "listen" (printf "%s:%d" (include "nexus.listenHost" .) (int .Values.scheduler.port)) -}}
{{- $_ := set $c "public_url" (include "nexus.schedulerPublicUrl" .) -}}
{{- $_ := set $c "payloads" (required "payloads: the S3 payload store URL (s3://bucket/prefix?...) is required" .Values.payloads) -}}
{{- $_ := set $c "shards" (include "nexus.shardsConfig" . | fromYaml) -}}
{{- $_ := set $c "auth" (include "nexus.authConfig" . | fromYaml) -}}
{{- $c = mustMergeOverwrite $c (deepCopy .Values.scheduler.config) -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The scheduler's auth section (scheduler.auth values; API keys from a mounted Secret). */}}
{{- define "nexus.authConfig" -}}
{{- $a := .Values.scheduler.auth -}}
{{- $c := dict "mode" $a.mode -}}
{{- if eq $a.mode "required" -}}
{{- if and (not $a.oidc) (not $a.apiKeys.existingSecret) -}}
{{- fail "scheduler.auth.mode: required needs scheduler.auth.oidc.issuer or scheduler.auth.apiKeys.existingSecret" -}}
{{- end -}}
{{- if not $a.rules -}}
{{- fail "scheduler.auth.rules: required with mode required (nothing is allowed that no rule grants)" -}}
{{- end -}}
{{- if $a.oidc -}}
{{- $_ := set $c "oidc" (deepCopy $a.oidc) -}}
{{- end -}}
{{- if $a.apiKeys.existingSecret -}}
{{- $_ := set $c "api_keys" (dict "files" (list (printf "/etc/nexus/api-keys/%s" $a.apiKeys.secretKey))) -}}
{{- end -}}
{{- $_ := set $c "rules" $a.rules -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* One shard's receiver config: (dict "ctx" $ "shard" $shard). */}}
{{- define "nexus.receiverConfig" -}}
{{- $v := .ctx.Values -}}
{{- $c := include "nexus.commonConfig" .ctx | fromYaml -}}
{{- $_ := set $c "listen" (printf "%s:%d" (include "nexus.listenHost" .ctx) (int $v.receiver.httpPort)) -}}
{{- $_ := set $c "grpc_listen" (printf "%s:%d" (include "nexus.listenHost" .ctx) (int $v.receiver.grpcPort)) -}}
{{- $_ := set $c "public_url" (include "nexus.receiverPublicUrl" .) -}}
{{- $_ := set $c "shard" .shard.name -}}
{{- $_ := set $c "payloads" (required "payloads: the S3 payload store URL (s3://bucket/prefix?...) is required" $v.payloads) -}}
{{- $_ := set $c "work_dir" "/var/lib/nexus/work" -}}
{{- $_ := set $c "runtime" $v.receiver.runtime -}}
{{- $_ := set $c "receiver" (dict "scheduler_url" (include "nexus.schedulerUrl" .ctx)) -}}
{{- if eq $v.receiver.runtime "kubernetes" -}}
{{- $_ := set $c "kubernetes" (dict "namespace" (include "nexus.runsNamespace" .) "api_budget" $v.kubeApiBudget) -}}
{{- $job := deepCopy $v.receiver.job -}}
{{- with (include "nexus.algorithmCaConfigMap" .ctx) -}}
{{- $_ := set $job "ca_config_map" . -}}
{{- if not $v.tls.algorithmCa.pem }}{{ $_ := set $job "ca_config_map_key" $v.tls.algorithmCa.key }}{{ end -}}
{{- end -}}
{{- $_ := set $c "job" $job -}}
{{- end -}}
{{- $c = mustMergeOverwrite $c (deepCopy $v.receiver.config) -}}
{{- $c = mustMergeOverwrite $c (deepCopy (default (dict) .shard.config)) -}}
{{- toYaml $c -}}
{{- end -}}

{{- define "nexus.supervisorConfig" -}}
{{- $c := include "nexus.commonConfig" . | fromYaml -}}
{{- $c = mustMergeOverwrite $c (include "nexus.catalogConfig" . | fromYaml) -}}
{{- $_ := set $c "listen" (printf "%s:%d" (include "nexus.listenHost" .) (int .Values.supervisor.port)) -}}
{{- $_ := set $c "scheduler_url" (include "nexus.schedulerUrl" .) -}}
{{- $_ := set $c "shards" (include "nexus.shardsConfig" . | fromYaml) -}}
{{- $_ := set $c "supervisor" (dict "leader_election" .Values.supervisor.leaderElection) -}}
{{- if eq .Values.supervisor.leaderElection "kubernetes" -}}
{{- if and (eq .Values.catalog.source "kubernetes") (ne (include "nexus.catalogNamespace" .) (include "nexus.leaseNamespace" .)) -}}
{{- fail "supervisor.leaseNamespace and catalog.namespace must be the same (the supervisor's kubernetes section serves both)" -}}
{{- end -}}
{{- $_ := set $c "kubernetes" (dict "namespace" (include "nexus.leaseNamespace" .) "api_budget" .Values.kubeApiBudget) -}}
{{- end -}}
{{- $c = mustMergeOverwrite $c (deepCopy .Values.supervisor.config) -}}
{{- toYaml $c -}}
{{- end -}}

{{- define "nexus.listenHost" -}}
{{- if contains ":" .Values.listenHost -}}[{{ .Values.listenHost }}]{{- else -}}{{ .Values.listenHost }}{{- end -}}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------------------------- */}}

{{/* Default topology spread of a component: (dict "ctx" $ "component" c ["shard" n] "own" list). */}}
{{- define "nexus.topologySpread" -}}
{{- if .own -}}
{{ toYaml .own }}
{{- else -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "nexus.selectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "nexus.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{/* Container env shared by every component. */}}
{{- define "nexus.env" -}}
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "nexus.probes" -}}
livenessProbe:
  httpGet:
    path: /health/livez
    port: {{ .port }}
    scheme: {{ include "nexus.httpScheme" .ctx | upper }}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /health/readyz
    port: {{ .port }}
    scheme: {{ include "nexus.httpScheme" .ctx | upper }}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/* Secret (signing key, gRPC secret), TLS, config and /tmp mounts. */}}
{{- define "nexus.volumeMounts" -}}
- name: config
  mountPath: /etc/nexus/config
  readOnly: true
- name: secrets
  mountPath: /etc/nexus/secrets
  readOnly: true
{{- if .Values.grpc.tls.enabled }}
- name: tls
  mountPath: /etc/nexus/tls
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: http-tls
  mountPath: /etc/nexus/http-tls
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "nexus.volumes" -}}
- name: config
  configMap:
    name: {{ include "nexus.fullname" .ctx }}-config
    items:
      - key: {{ .configKey }}
        path: nexus.yaml
- name: secrets
  secret:
    secretName: {{ include "nexus.secretName" .ctx }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.secrets.signingKeyKey }}
        path: signing.key
      {{- if eq .ctx.Values.grpc.auth "shared-secret" }}
      - key: {{ .ctx.Values.secrets.grpcSecretKey }}
        path: grpc.secret
      {{- end }}
{{- if .ctx.Values.grpc.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "grpc.tls.secretName: required with grpc.tls.enabled" .ctx.Values.grpc.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if .ctx.Values.tls.enabled }}
- name: http-tls
  secret:
    secretName: {{ required "tls.secretName: required with tls.enabled (a Secret with tls.crt and tls.key)" .ctx.Values.tls.secretName }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSize | default "256Mi" }}
{{- end -}}

{{- define "nexus.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* affinity of a component: its own, or a preference for one pod per node:
     (dict "ctx" $ "component" c ["shard" n] "own" map). */}}
{{- define "nexus.affinity" -}}
{{- if .own -}}
{{ toYaml .own }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "nexus.selectorLabels" . | nindent 12 }}
{{- end -}}
{{- end -}}
