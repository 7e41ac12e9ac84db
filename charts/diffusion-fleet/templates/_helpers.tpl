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

{{/* The Redis URL; the bundled Redis's password comes from $(REDIS_PASSWORD), which
     dfleet.redisPasswordEnv defines just before it (Kubernetes expands it). */}}
{{- define "dfleet.redisUrl" -}}
{{- if .Values.redis.bundled -}}
redis://:$(REDIS_PASSWORD)@{{ include "dfleet.fullname" . }}-redis:6379/0
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

{{- define "dfleet.redisSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "dfleet.fullname" .)) -}}
{{- end -}}

{{- define "dfleet.redisPasswordEnv" -}}
{{- if .Values.redis.bundled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "dfleet.redisSecret" . }}, key: {{ .Values.redis.auth.secretKey }}}
{{- end }}
{{- end -}}

{{/* Requests and limits of a container: its own, filled in from defaultResources. */}}
{{- define "dfleet.resources" -}}
{{- $res := merge (deepCopy (.own | default dict)) (deepCopy .root.Values.defaultResources) -}}
{{- toYaml $res -}}
{{- end -}}

{{/* The fleet's certificates (security.tls.secretName: tls.crt, tls.key, ca.crt). */}}
{{- define "dfleet.tlsVolume" -}}
{{- if .Values.security.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "security.tls.secretName is required when security.tls.enabled" .Values.security.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "dfleet.tlsMount" -}}
{{- if .Values.security.tls.enabled }}
- {name: tls, mountPath: /etc/dfleet/tls, readOnly: true}
{{- end }}
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
{{- include "dfleet.redisPasswordEnv" .root }}
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
{{- if .root.Values.security.tls.enabled }}
- name: DFLEET_TLS_CERT
  value: /etc/dfleet/tls/tls.crt
- name: DFLEET_TLS_KEY
  value: /etc/dfleet/tls/tls.key
- name: DFLEET_TLS_CA
  value: /etc/dfleet/tls/ca.crt
{{- end }}
{{- end -}}

{{/* Health probes; call with (dict "root" $ "port" PORT). gRPC probes, or with TLS on an
     exec probe that checks health over the service's own TLS (the kubelet's gRPC probe
     speaks plaintext only). */}}
{{- define "dfleet.probe" -}}
{{- if .root.Values.security.tls.enabled }}
exec: {command: ["python", "-m", "services.common.health_probe", "--port", {{ .port | quote }}]}
{{- else }}
grpc: {port: {{ .port }}}
{{- end }}
{{- end -}}

{{- define "dfleet.probes" -}}
startupProbe:
  {{- include "dfleet.probe" . | nindent 2 }}
  periodSeconds: 5
  failureThreshold: {{ .root.Values.probes.startupFailureThreshold }}
readinessProbe:
  {{- include "dfleet.probe" . | nindent 2 }}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  failureThreshold: 2
  timeoutSeconds: 5
livenessProbe:
  {{- include "dfleet.probe" . | nindent 2 }}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  failureThreshold: 3
  timeoutSeconds: 5
{{- end -}}

{{/* One PodDisruptionBudget per node: a drain takes at most maxUnavailable of its pods at
     a time. Call with (dict "root" $ "node" NAME). */}}
{{- define "dfleet.pdb" -}}
{{- if .root.Values.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ printf "%s-%s" (include "dfleet.fullname" .root) .node }}
  labels:
    {{- include "dfleet.labels" .root | nindent 4 }}
spec:
  maxUnavailable: {{ .root.Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "dfleet.selector" (dict "root" .root "node" .node) | nindent 6 }}
{{- end }}
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
    resources:
      {{- toYaml .Values.initResources | nindent 6 }}
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
