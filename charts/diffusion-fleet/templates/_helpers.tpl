{{/* Prefix of every object's name; short, so "<prefix>-<model node>" stays a DNS label. */}}
{{- define "dfleet.fullname" -}}
{{- .Release.Name | trunc 22 | trimSuffix "-" -}}
{{- end -}}

{{- define "dfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector of one component; call with (dict "root" $ "node" NAME). */}}
{{- define "dfleet.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
dfleet.io/node: {{ .node }}
{{- end -}}

{{- define "dfleet.image" -}}
{{ printf "%s:%s" (required "image.repository is required" .Values.image.repository) (required "image.tag is required" .Values.image.tag) | quote }}
{{- end -}}

{{- define "dfleet.redisUrl" -}}
{{- if .Values.redis.bundled -}}
redis://{{ include "dfleet.fullname" . }}-redis:6379/0
{{- else -}}
{{ required "redis.externalUrl is required when redis.bundled is false" .Values.redis.externalUrl }}
{{- end -}}
{{- end -}}

{{/* One autoscaling setting of a node: its own value, else autoscaling's default. hasKey,
     not `default`/`merge`, so an explicit 0 (minReplicas: 0) is kept. Call with
     (dict "node" ENTRY "root" $ "key" KEY). */}}
{{- define "dfleet.setting" -}}
{{- if hasKey .node .key -}}{{ index .node .key }}{{- else -}}{{ index .root.Values.autoscaling .key }}{{- end -}}
{{- end -}}

{{/* Replicas to create a Deployment with. With the controller on, spec.replicas is left out
     so that `helm upgrade` never resets what the controller set (it starts at 1 and the
     controller corrects it within a tick). */}}
{{- define "dfleet.replicas" -}}
{{- if not (or .root.Values.controller.enabled .root.Values.keda.enabled) }}
replicas: {{ include "dfleet.setting" (dict "node" .node "root" .root "key" "minReplicas") }}
{{- end }}
{{- end -}}

{{- define "dfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "dfleet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment of a service container; call with (dict "root" $ "role" ROLE "port" PORT). */}}
{{- define "dfleet.serviceEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: DFLEET_HOST
  value: "0.0.0.0"
- name: DFLEET_ADVERTISE_HOST
  value: "$(POD_IP)"
- name: DFLEET_PORT
  value: {{ .port | quote }}
- name: DFLEET_REPLICA_ID
  value: "$(POD_NAME)-{{ .role }}"
- name: DFLEET_MODELS_DIR
  value: {{ .root.Values.modelStore.mountPath | quote }}
- name: DFLEET_REDIS_URL
  value: {{ include "dfleet.redisUrl" .root | quote }}
- name: DFLEET_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
{{- if .root.Values.metrics.enabled }}
- name: DFLEET_METRICS_PORT
  value: {{ .metricsPort | default .root.Values.metrics.port | quote }}
{{- end }}
{{- with .root.Values.tracing }}
{{- if .enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "tracing.endpoint is required when tracing.enabled" .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | default "grpc" | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | default "parentbased_always_on" | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplerArg | default "1.0" | quote }}
{{- end }}
{{- end }}
- name: HOME
  value: /tmp
{{- end -}}

{{/* gRPC health probes; call with (dict "root" $ "port" PORT). */}}
{{- define "dfleet.probes" -}}
startupProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ .root.Values.probes.startupFailureThreshold }}
readinessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  failureThreshold: 2
livenessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  failureThreshold: 3
  timeoutSeconds: 5
{{- end -}}

{{- define "dfleet.modelVolume" -}}
{{- $store := .Values.modelStore -}}
- name: models
{{- if eq $store.source "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ required "modelStore.claimName is required with source persistentVolumeClaim" $store.claimName }}
    readOnly: true
{{- else if eq $store.source "hostPath" }}
  hostPath:
    path: {{ required "modelStore.hostPath is required with source hostPath" $store.hostPath }}
    type: Directory
{{- else if eq $store.source "tiny" }}
  emptyDir: {}
{{- else }}
{{- fail (printf "modelStore.source %q is not one of tiny, persistentVolumeClaim, hostPath" $store.source) }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* Writes the tiny model into the emptyDir before the services start (modelStore.source tiny only). */}}
{{- define "dfleet.initContainers" -}}
{{- if eq .Values.modelStore.source "tiny" }}
initContainers:
  - name: tiny-model
    image: {{ include "dfleet.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["dfleet", "tiny-model", {{ .Values.modelStore.mountPath | quote }}]
    env:
      - name: HOME
        value: /tmp
    securityContext:
      {{- include "dfleet.containerSecurityContext" . | nindent 6 }}
    volumeMounts:
      - {name: models, mountPath: {{ .Values.modelStore.mountPath }}}
      - {name: tmp, mountPath: /tmp}
{{- end }}
{{- end -}}

{{- define "dfleet.modelMounts" -}}
- name: models
  mountPath: {{ .Values.modelStore.mountPath }}
  readOnly: {{ ne .Values.modelStore.source "tiny" }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Scheduling of a pod: the entry's own nodeSelector/tolerations, else the chart's. */}}
{{- define "dfleet.scheduling" -}}
{{- with (.node.nodeSelector | default .root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.node.tolerations | default .root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scrape annotations of a pod (the first metrics port of a co-located pod). */}}
{{- define "dfleet.scrapeAnnotations" -}}
{{- if .Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
