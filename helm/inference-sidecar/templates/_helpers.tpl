{{/*
Names and labels.
*/}}
{{- define "inference-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inference-sidecar.fullname" -}}
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

{{- define "inference-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "inference-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "inference-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "inference-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inference-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inference-sidecar.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "inference-sidecar.modelImage" -}}
{{- $image := .Values.modelRepository.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}
{{- end }}

{{/*
Settings derived from `config` (the server's sidecar.yaml). A key removed with
null falls back to the server's own default (sidecar/config.py); a test keeps
these fallbacks equal to ServerConfig's defaults.
*/}}
{{- define "inference-sidecar.grpcPort" -}}
{{- dig "grpc" "port" 8001 .Values.config | int }}
{{- end }}

{{- define "inference-sidecar.metricsPort" -}}
{{- dig "metrics" "port" 8002 .Values.config | int }}
{{- end }}

{{/* The plaintext health-only port (config.grpc.health_port), "" when unset. */}}
{{- define "inference-sidecar.healthPort" -}}
{{- with dig "grpc" "health_port" nil .Values.config }}{{ . | int }}{{ end }}
{{- end }}

{{/* The port kubelet's gRPC probes call: the health port when there is one (it is
plaintext; the probes cannot speak TLS), else the gRPC port. */}}
{{- define "inference-sidecar.probePort" -}}
{{- include "inference-sidecar.healthPort" . | default (include "inference-sidecar.grpcPort" .) }}
{{- end }}

{{- define "inference-sidecar.grpcTls" -}}
{{- if dig "grpc" "tls" "cert_file" nil .Values.config }}true{{ end }}
{{- end }}

{{- define "inference-sidecar.metricsTls" -}}
{{- if and (include "inference-sidecar.metricsEnabled" .) (dig "metrics" "tls" "cert_file" nil .Values.config) }}true{{ end }}
{{- end }}

{{- define "inference-sidecar.metricsMutualTls" -}}
{{- if and (include "inference-sidecar.metricsTls" .) (dig "metrics" "tls" "client_ca_file" nil .Values.config) }}true{{ end }}
{{- end }}

{{- define "inference-sidecar.metricsEnabled" -}}
{{- if dig "metrics" "enabled" true .Values.config }}true{{ end }}
{{- end }}

{{- define "inference-sidecar.device" -}}
{{- dig "device" "auto" .Values.config }}
{{- end }}

{{/* Seconds from SIGTERM until the server has stopped at the latest. */}}
{{- define "inference-sidecar.drainSeconds" -}}
{{- $drain := dig "shutdown" "drain_delay_seconds" 0.0 .Values.config | float64 }}
{{- $grace := dig "shutdown" "grace_period_seconds" 10.0 .Values.config | float64 }}
{{- addf $drain $grace }}
{{- end }}

{{- define "inference-sidecar.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- addf (include "inference-sidecar.drainSeconds" . | float64) .Values.terminationMarginSeconds | ceil | int }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/* The Prometheus Operator's CRDs are installed. */}}
{{- define "inference-sidecar.operator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{- define "inference-sidecar.monitor" -}}
{{- if and (include "inference-sidecar.metricsEnabled" .) (include "inference-sidecar.operator" .) .Values.prometheus.monitor.enabled }}
{{- .Values.prometheus.monitor.kind }}
{{- end }}
{{- end }}

{{/*
How /models is filled (see modelRepository in values.yaml):
  bundled:   nothing mounted, the server serves its bundled examples;
  pvc:       the claim mounted at /models, or, when `models` gives configs, at
             /models/.source with an emptyDir at /models that the model-layout
             init container fills with links into it and the config files
             (links must stay inside the repository: the server refuses others);
  image:     an emptyDir at /models the copy-models init container fills from
             the image, then model-layout writes the configs;
  configMap: a projected volume of the user's ConfigMap and the configs.
*/}}
{{- define "inference-sidecar.modelLayout" -}}
{{- $source := .Values.modelRepository.source }}
{{- if and .Values.models (or (eq $source "pvc") (eq $source "image")) }}true{{ end }}
{{- end }}

{{- define "inference-sidecar.modelsMount" -}}
{{- $source := .Values.modelRepository.source }}
{{- if ne $source "bundled" }}
- name: models
  mountPath: /models
  readOnly: true
{{- if and (eq $source "pvc") (include "inference-sidecar.modelLayout" .) }}
- name: model-source
  mountPath: /models/.source
  readOnly: true
  {{- with .Values.modelRepository.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- else if eq $source "pvc" }}
  {{- with .Values.modelRepository.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks across values that the schema cannot express, each failing with a
message that names the value to change.
*/}}
{{- define "inference-sidecar.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.mode "sidecar") (not $v.app.image) }}
{{- fail "app.image is required when mode is sidecar: it is the image of the application container the server runs next to" }}
{{- end }}
{{- $device := include "inference-sidecar.device" . }}
{{- $gpus := $v.gpu.count | int }}
{{- if and (gt $gpus 0) (eq $device "cpu") }}
{{- fail (printf "gpu.count is %d but config.device is \"cpu\": set config.device to auto, cuda or cuda:N to use the GPU, or gpu.count to 0" $gpus) }}
{{- end }}
{{- if and (hasPrefix "cuda" $device) (eq $gpus 0) }}
{{- fail (printf "config.device is %q but gpu.count is 0: request the GPU with gpu.count (at least 1), or set config.device to auto or cpu" $device) }}
{{- end }}
{{- if hasPrefix "cuda:" $device }}
{{- $index := trimPrefix "cuda:" $device | int }}
{{- if ge $index $gpus }}
{{- fail (printf "config.device is %q but gpu.count is %d: the container sees GPUs cuda:0 to cuda:%d only" $device $gpus (sub $gpus 1)) }}
{{- end }}
{{- end }}
{{- $grpcPort := include "inference-sidecar.grpcPort" . | int }}
{{- $metricsPort := include "inference-sidecar.metricsPort" . | int }}
{{- if and (include "inference-sidecar.metricsEnabled" .) (eq $grpcPort $metricsPort) }}
{{- fail (printf "config.grpc.port and config.metrics.port are both %d: give them different ports" $grpcPort) }}
{{- end }}
{{- $healthPort := include "inference-sidecar.healthPort" . }}
{{- if $healthPort }}
{{- if eq ($healthPort | int) $grpcPort }}
{{- fail (printf "config.grpc.health_port and config.grpc.port are both %d: the health port is a second listener, give it its own port" $grpcPort) }}
{{- end }}
{{- if and (include "inference-sidecar.metricsEnabled" .) (eq ($healthPort | int) $metricsPort) }}
{{- fail (printf "config.grpc.health_port and config.metrics.port are both %d: give them different ports" $metricsPort) }}
{{- end }}
{{- else if include "inference-sidecar.grpcTls" . }}
{{- fail "config.grpc.tls.cert_file is set (TLS on the gRPC port) but config.grpc.health_port is not: Kubernetes' gRPC probes cannot speak TLS, so set config.grpc.health_port (for example 8003), a plaintext port serving only grpc.health.v1, and the chart points the probes at it" }}
{{- end }}
{{- if eq $v.mode "sidecar" }}
{{- range $v.app.ports }}
{{- $port := .containerPort | int }}
{{- if or (eq $port $grpcPort) (and (include "inference-sidecar.metricsEnabled" $) (eq $port $metricsPort)) (and $healthPort (eq $port ($healthPort | int))) }}
{{- fail (printf "app.ports: containerPort %d is the server's port (config.grpc.port %d, config.metrics.port %d, config.grpc.health_port %s): the app and the server share the pod's network" $port $grpcPort $metricsPort ($healthPort | default "unset")) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $v.extraEnv }}
{{- if regexMatch "^SIDECAR_(GRPC|METRICS|SHUTDOWN)__" .name }}
{{- fail (printf "extraEnv: %s overrides a setting the chart derives ports, probes and the termination grace period from; set it under config instead" .name) }}
{{- end }}
{{- if and (hasPrefix "SIDECAR_LABELS__" .name) (include "inference-sidecar.redisSecret" $) }}
{{- fail (printf "extraEnv: %s conflicts with labels.redis, which sets the label store's environment" .name) }}
{{- end }}
{{- end }}
{{- $source := $v.modelRepository.source }}
{{- if and $v.models (eq $source "bundled") }}
{{- fail (printf "models gives configs for %s but modelRepository.source is bundled: choose pvc, image or configMap for your own models" (keys $v.models | sortAlpha | join ", ")) }}
{{- end }}
{{- if and (eq $source "pvc") (not $v.modelRepository.pvc.claimName) }}
{{- fail "modelRepository.pvc.claimName is required when modelRepository.source is pvc" }}
{{- end }}
{{- if and (eq $source "image") (not $v.modelRepository.image.repository) }}
{{- fail "modelRepository.image.repository is required when modelRepository.source is image" }}
{{- end }}
{{- if eq $source "configMap" }}
{{- if not $v.modelRepository.configMap.name }}
{{- fail "modelRepository.configMap.name is required when modelRepository.source is configMap" }}
{{- end }}
{{- if not $v.modelRepository.configMap.items }}
{{- fail "modelRepository.configMap.items is required when modelRepository.source is configMap: map each key to its path, e.g. {key: digits.onnx, path: digits/1/model.onnx}" }}
{{- end }}
{{- range $v.modelRepository.configMap.items }}
{{- $model := index (splitList "/" .path) 0 }}
{{- if and (hasKey $v.models $model) (eq .path (printf "%s/config.yaml" $model)) }}
{{- fail (printf "modelRepository.configMap.items puts %s, which models.%s also renders: keep one of them" .path $model) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.labels.redis.url $v.labels.redis.existingSecret }}
{{- fail "labels.redis.url and labels.redis.existingSecret are both set: keep one" }}
{{- end }}
{{- if dig "labels" "url" "" $v.config }}
{{- fail "config.labels.url would put the label store's URL (and its password) in a ConfigMap: set labels.redis.url or labels.redis.existingSecret instead" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt ($v.autoscaling.minReplicas | int) ($v.autoscaling.maxReplicas | int)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is larger than autoscaling.maxReplicas (%d)" ($v.autoscaling.minReplicas | int) ($v.autoscaling.maxReplicas | int)) }}
{{- end }}
{{- if $v.podDisruptionBudget.enabled }}
{{- $pdb := $v.podDisruptionBudget }}
{{- if eq (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget: set exactly one of maxUnavailable and minAvailable (the other null)" }}
{{- end }}
{{- end }}
{{- $drain := include "inference-sidecar.drainSeconds" . | float64 }}
{{- if not (kindIs "invalid" $v.terminationGracePeriodSeconds) }}
{{- if le ($v.terminationGracePeriodSeconds | float64) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed the server's drain time, config.shutdown.drain_delay_seconds + grace_period_seconds = %v s, or Kubernetes kills it mid-drain; leave it null to derive it" $v.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- end }}
{{- $liveness := mul ($v.probes.liveness.periodSeconds | int) ($v.probes.liveness.failureThreshold | int) }}
{{- if le ($liveness | float64) $drain }}
{{- fail (printf "probes.liveness: periodSeconds × failureThreshold = %d s must exceed the server's drain time (%v s), or the liveness probe restarts the server while it drains" $liveness $drain) }}
{{- end }}
{{- if and (include "inference-sidecar.monitor" .) (include "inference-sidecar.metricsTls" .) }}
{{- $tls := $v.prometheus.monitor.tls }}
{{- if not (or $tls.ca.secretName $tls.insecureSkipVerify) }}
{{- fail "config.metrics.tls is on (HTTPS metrics port) and the chart renders a monitor: set prometheus.monitor.tls.ca.secretName (a Secret holding the CA that signed the metrics certificate, key prometheus.monitor.tls.ca.key) so that Prometheus can verify it, or prometheus.monitor.tls.insecureSkipVerify" }}
{{- end }}
{{- if and (include "inference-sidecar.metricsMutualTls" .) (not $tls.clientCert.secretName) }}
{{- fail "config.metrics.tls.client_ca_file is set (mutual TLS on the metrics port): set prometheus.monitor.tls.clientCert.secretName, a kubernetes.io/tls Secret with the client certificate and key Prometheus presents" }}
{{- end }}
{{- end }}
{{- if and (eq (include "inference-sidecar.monitor" .) "ServiceMonitor") (not $v.service.enabled) }}
{{- fail "prometheus.monitor.kind is ServiceMonitor but service.enabled is false: enable the Service or use kind PodMonitor" }}
{{- end }}
{{- end }}

{{/*
The server container. Its name is "server" in both modes.
*/}}
{{- define "inference-sidecar.serverContainer" -}}
{{- $grpcPort := include "inference-sidecar.grpcPort" . | int }}
{{- $probeGrpc := dict "port" (include "inference-sidecar.probePort" . | int) }}
{{- with .Values.probes.service }}
{{- $_ := set $probeGrpc "service" . }}
{{- end }}
- name: server
  image: {{ include "inference-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  command: [inference-sidecar]
  args:
    - serve
    - --config
    - /etc/sidecar/sidecar.yaml
    {{- if ne .Values.modelRepository.source "bundled" }}
    - --model-repository
    - /models
    {{- end }}
  ports:
    - name: grpc
      containerPort: {{ $grpcPort }}
      protocol: TCP
    {{- with include "inference-sidecar.healthPort" . }}
    # Plaintext grpc.health.v1 only, for the probes (config.grpc.health_port).
    - name: grpc-health
      containerPort: {{ . }}
      protocol: TCP
    {{- end }}
    {{- if include "inference-sidecar.metricsEnabled" . }}
    - name: metrics
      containerPort: {{ include "inference-sidecar.metricsPort" . }}
      protocol: TCP
    {{- end }}
  {{- if or .Values.extraEnv (include "inference-sidecar.redisSecret" .) }}
  env:
    {{- with include "inference-sidecar.redisSecret" . }}
    # The shared label store (config.labels.backend and .url).
    - name: SIDECAR_LABELS__BACKEND
      value: redis
    - name: SIDECAR_LABELS__URL
      valueFrom:
        secretKeyRef:
          {{- . | nindent 10 }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    grpc:
      {{- toYaml $probeGrpc | nindent 6 }}
    {{- toYaml .Values.probes.startup | nindent 4 }}
  readinessProbe:
    grpc:
      {{- toYaml $probeGrpc | nindent 6 }}
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  livenessProbe:
    grpc:
      {{- toYaml $probeGrpc | nindent 6 }}
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  resources:
    {{- $resources := deepCopy (.Values.resources | default dict) }}
    {{- if gt (.Values.gpu.count | int) 0 }}
    {{- range $kind := list "limits" "requests" }}
    {{- $_ := set $resources $kind (set (get $resources $kind | default dict) $.Values.gpu.resourceName ($.Values.gpu.count | int)) }}
    {{- end }}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/sidecar
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- with include "inference-sidecar.modelsMount" . }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The secretKeyRef of the Redis URL, when there is one. */}}
{{- define "inference-sidecar.redisSecret" -}}
{{- $redis := .Values.labels.redis }}
{{- if $redis.existingSecret }}
name: {{ $redis.existingSecret }}
key: {{ $redis.existingSecretKey }}
{{- else if $redis.url }}
name: {{ include "inference-sidecar.fullname" . }}-redis
key: url
{{- end }}
{{- end }}

{{/*
Init containers that fill /models (image and pvc sources).
*/}}
{{- define "inference-sidecar.modelInitContainers" -}}
{{- $source := .Values.modelRepository.source }}
{{- if eq $source "image" }}
{{- $image := .Values.modelRepository.image }}
- name: copy-models
  image: {{ include "inference-sidecar.modelImage" . }}
  imagePullPolicy: {{ $image.pullPolicy }}
  {{- if $image.command }}
  command:
    {{- toYaml $image.command | nindent 4 }}
  {{- else }}
  command: [sh, -c, 'cp -R "$SOURCE"/. "$REPOSITORY"/']
  {{- end }}
  env:
    - name: SOURCE
      value: {{ $image.path | quote }}
    - name: REPOSITORY
      value: /models
  resources:
    {{- toYaml $image.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /models
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- if include "inference-sidecar.modelLayout" . }}
- name: model-layout
  image: {{ include "inference-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [sh, /etc/sidecar-layout/model-layout.sh]
  env:
    {{- if eq $source "pvc" }}
    - name: SOURCE
      value: /models/.source
    {{- end }}
    - name: REPOSITORY
      value: /models
    - name: CONFIGS
      value: /etc/sidecar-layout/models
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /models
    {{- if eq $source "pvc" }}
    - name: model-source
      mountPath: /models/.source
      readOnly: true
      {{- with .Values.modelRepository.pvc.subPath }}
      subPath: {{ . }}
      {{- end }}
    {{- end }}
    - name: layout
      mountPath: /etc/sidecar-layout
      readOnly: true
{{- end }}
{{- end }}

{{/*
The pod's volumes.
*/}}
{{- define "inference-sidecar.volumes" -}}
{{- $fullname := include "inference-sidecar.fullname" . }}
{{- $source := .Values.modelRepository.source }}
- name: config
  configMap:
    name: {{ $fullname }}
    items:
      - key: sidecar.yaml
        path: sidecar.yaml
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if eq $source "pvc" }}
{{- if include "inference-sidecar.modelLayout" . }}
- name: models
  emptyDir:
    sizeLimit: 16Mi
- name: model-source
  persistentVolumeClaim:
    claimName: {{ .Values.modelRepository.pvc.claimName }}
    readOnly: true
{{- else }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelRepository.pvc.claimName }}
    readOnly: true
{{- end }}
{{- else if eq $source "image" }}
- name: models
  emptyDir:
    sizeLimit: {{ .Values.modelRepository.image.sizeLimit }}
{{- else if eq $source "configMap" }}
- name: models
  projected:
    defaultMode: 0444
    sources:
      - configMap:
          name: {{ .Values.modelRepository.configMap.name }}
          items:
            {{- toYaml .Values.modelRepository.configMap.items | nindent 12 }}
      {{- if .Values.models }}
      - configMap:
          name: {{ $fullname }}
          items:
            {{- range $name, $_ := .Values.models }}
            - key: model.{{ $name }}.yaml
              path: {{ $name }}/config.yaml
            {{- end }}
      {{- end }}
{{- end }}
{{- if include "inference-sidecar.modelLayout" . }}
- name: layout
  configMap:
    name: {{ $fullname }}
    defaultMode: 0444
    items:
      - key: model-layout.sh
        path: model-layout.sh
      {{- range $name, $_ := .Values.models }}
      - key: model.{{ $name }}.yaml
        path: models/{{ $name }}.yaml
      {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
