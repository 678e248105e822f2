{{/*
Expand the name of the chart.
*/}}
{{- define "attnserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, truncated at 63 characters because
some Kubernetes name fields are limited to this (by the DNS naming spec). If
the release name contains the chart name it is used as the full name.
*/}}
{{- define "attnserve.fullname" -}}
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

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "attnserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "attnserve.labels" -}}
helm.sh/chart: {{ include "attnserve.chart" . }}
{{ include "attnserve.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "attnserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "attnserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The name of the service account to use.
*/}}
{{- define "attnserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "attnserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository@digest, else repository:tag with the tag
defaulting to "<appVersion>-gpu".
*/}}
{{- define "attnserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "%s-gpu" .Chart.AppVersion)) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the API keys.
*/}}
{{- define "attnserve.secretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- include "attnserve.fullname" . }}
{{- end }}
{{- end }}

{{/*
The API keys file for the chart's Secret: the given keys, one per line; else
the key already stored in the release's Secret (kept across upgrades); else a
new random key.
*/}}
{{- define "attnserve.apiKeysFile" -}}
{{- if .Values.auth.apiKeys }}
{{- join "\n" .Values.auth.apiKeys }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "attnserve.fullname" .) }}
{{- $stored := "" }}
{{- if $existing }}
{{- if $existing.data }}
{{- if hasKey $existing.data .Values.auth.secretKey }}
{{- $stored = index $existing.data .Values.auth.secretKey | b64dec }}
{{- end }}
{{- end }}
{{- end }}
{{- $stored | default (randAlphaNum 40) }}
{{- end }}
{{- end }}

{{/*
Name of the job store PersistentVolumeClaim.
*/}}
{{- define "attnserve.jobsClaimName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- printf "%s-jobs" (include "attnserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Access mode of the job store: as set, else ReadWriteMany when more than one
pod may share it, else ReadWriteOnce.
*/}}
{{- define "attnserve.jobsAccessMode" -}}
{{- if .Values.persistence.accessMode }}
{{- .Values.persistence.accessMode }}
{{- else if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- print "ReadWriteMany" }}
{{- else }}
{{- print "ReadWriteOnce" }}
{{- end }}
{{- end }}

{{/*
Deployment strategy: as set, else Recreate while the job store is a
ReadWriteOnce claim, else (an object store, or a shared claim) a surge-first
rolling update.
*/}}
{{- define "attnserve.strategy" -}}
{{- if .Values.strategy }}
{{- toYaml .Values.strategy }}
{{- else if and .Values.persistence.enabled (not .Values.objectStore.enabled) (eq (include "attnserve.jobsAccessMode" .) "ReadWriteOnce") }}
type: Recreate
{{- else }}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- end }}
{{- end }}

{{/*
Whether CUDA is required for readiness: only when GPUs are requested.
*/}}
{{- define "attnserve.requireCuda" -}}
{{- if and .Values.gpu.enabled .Values.config.requireCuda }}true{{ else }}false{{ end }}
{{- end }}

{{/*
Container resources, with the GPU limit added when GPUs are requested.
*/}}
{{- define "attnserve.resources" -}}
{{- $res := deepCopy (.Values.resources | default dict) }}
{{- if and .Values.gpu.enabled (gt (int .Values.gpu.count) 0) }}
{{- $limits := get $res "limits" | default dict }}
{{- $_ := set $limits .Values.gpu.resourceName (int .Values.gpu.count) }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
The longest in-flight request, in seconds: what drains after SIGTERM.
*/}}
{{- define "attnserve.drainSeconds" -}}
{{- max (int .Values.config.shutdownGraceS) (int .Values.config.requestTimeoutS) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than the preStop pause plus the longest
request, so a draining pod is never killed mid-request.
*/}}
{{- define "attnserve.terminationGracePeriodSeconds" -}}
{{- $preStop := int .Values.shutdown.preStopSleepSeconds }}
{{- $set := .Values.shutdown.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- add $preStop (include "attnserve.drainSeconds" . | int) 15 }}
{{- else if le (int $set) (add $preStop (int .Values.config.requestTimeoutS)) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must exceed shutdown.preStopSleepSeconds + config.requestTimeoutS (%d)" (int $set) (add $preStop (int .Values.config.requestTimeoutS))) }}
{{- else }}
{{- int $set }}
{{- end }}
{{- end }}

{{/*
Whether scene work goes through the shared queue: "true" with a queue URL in
a Secret or the bundled Valkey, else empty.
*/}}
{{- define "attnserve.queueEnabled" -}}
{{- if and .Values.queue.existingSecret .Values.redis.enabled }}
{{- fail "set queue.existingSecret or redis.enabled, not both: the replicas share one queue" }}
{{- end }}
{{- if or .Values.queue.existingSecret .Values.redis.enabled }}
{{- if not .Values.objectStore.enabled }}
{{- fail "the shared queue needs objectStore.enabled: units' results meet in the bucket, not on a shared volume" }}
{{- end }}
{{- print "true" }}
{{- end }}
{{- end }}

{{/*
The bundled Valkey's URL: its Service is named as that chart names itself
(<release>-redis under the dependency's alias, or its fullnameOverride).
*/}}
{{- define "attnserve.bundledQueueUrl" -}}
{{- $host := printf "%s-redis" .Release.Name }}
{{- if .Values.redis.fullnameOverride }}
{{- $host = .Values.redis.fullnameOverride }}
{{- else if contains "redis" .Release.Name }}
{{- $host = .Release.Name }}
{{- end }}
{{- printf "redis://%s:%d/0" ($host | trunc 63 | trimSuffix "-") (int .Values.redis.service.port) }}
{{- end }}

{{/*
Environment variables of the server and batch containers beyond the
ConfigMap: secrets (object store keys, the queue URL) and extraEnv.
*/}}
{{- define "attnserve.env" -}}
{{- $credentials := .Values.objectStore.credentials }}
{{- if and .Values.objectStore.enabled $credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $credentials.existingSecret }}
      key: {{ $credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $credentials.existingSecret }}
      key: {{ $credentials.secretAccessKeyKey }}
{{- end }}
{{- with .Values.queue.existingSecret }}
- name: ATTNSERVE_QUEUE_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.queue.secretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod settings the server and the batch workers share: pull secrets, service
account, runtime and priority class, security context.
*/}}
{{- define "attnserve.podIdentity" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "attnserve.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
{{- with .Values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/*
Where the server and the batch workers may run: GPU nodes by default.
*/}}
{{- define "attnserve.placement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The container's mounts: /tmp and the job directory (the root filesystem is
read-only), the API keys file and a model repository of one's own.
*/}}
{{- define "attnserve.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: jobs
  mountPath: /var/lib/attnserve/jobs
{{- if .Values.auth.enabled }}
- name: api-keys
  mountPath: /etc/attnserve/auth
  readOnly: true
{{- end }}
{{- if .Values.modelRepository.existingClaim }}
- name: models
  mountPath: /models
  readOnly: true
  {{- with .Values.modelRepository.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
The volumes behind those mounts, all but "jobs" (the server's job store or the
batch workers' scratch space).
*/}}
{{- define "attnserve.volumes" -}}
- name: tmp
  {{- if or .Values.tmp.medium .Values.tmp.sizeLimit }}
  emptyDir:
    {{- with .Values.tmp.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.tmp.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if .Values.auth.enabled }}
- name: api-keys
  secret:
    secretName: {{ include "attnserve.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.secretKey }}
        path: {{ .Values.auth.secretKey }}
{{- end }}
{{- if .Values.modelRepository.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelRepository.existingClaim }}
    readOnly: true
{{- end }}
{{- end }}
