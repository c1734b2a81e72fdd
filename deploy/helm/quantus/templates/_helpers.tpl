{{/* Names and labels shared by every object of the release. */}}

{{- define "quantus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "quantus.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selects one role's pods: include "quantus.selector" (list $ "api") */}}
{{- define "quantus.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "quantus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "quantus.apiUrl" -}}
http://{{ include "quantus.fullname" . }}-api:{{ .Values.api.service.port }}
{{- end -}}

{{- define "quantus.publicUrl" -}}
{{- .Values.publicUrl | default (include "quantus.apiUrl" .) -}}
{{- end -}}

{{- define "quantus.dataClaim" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "quantus.fullname" .)) -}}
{{- end -}}

{{/* The pod-level settings of every role: unprivileged user of the image, no service
account token (the binary never calls the Kubernetes API). */}}
{{- define "quantus.podSpec" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container-level settings of every role: the binary writes only to DATA_DIR and the
temporary folder, so the root file system is read-only. */}}
{{- define "quantus.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* The environment of a role: shared settings from the ConfigMap, secrets by key. Every
role needs the store, the log and the master key (projectors open personal data with it);
only the HTTP roles get the object store's and Stripe's credentials:
include "quantus.env" (list $ true) */}}
{{- define "quantus.env" -}}
{{- $root := index . 0 -}}
envFrom:
  - configMapRef:
      name: {{ include "quantus.fullname" $root }}
env:
  {{- range list "DATABASE_URL" "KAFKA_BROKERS" "QUANTUS_MASTER_KEY" }}
  - name: {{ . }}
    valueFrom:
      secretKeyRef:
        name: {{ $root.Values.secretName }}
        key: {{ . }}
  {{- end }}
  {{- if index . 1 }}
  {{- range list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "STRIPE_SECRET_KEY" "STRIPE_WEBHOOK_SECRET" }}
  - name: {{ . }}
    valueFrom:
      secretKeyRef:
        name: {{ $root.Values.secretName }}
        key: {{ . }}
        optional: true
  {{- end }}
  {{- end }}
{{- end -}}

{{/* Probes of the HTTP roles: /healthz (the process serves) for liveness and start-up,
/readyz (the store answers and no read model is stalled or far behind) for readiness. */}}
{{/* Probes of the relay and the projectors, which serve only /metrics, /healthz and /readyz:
/healthz for start-up, liveness and readiness. Their /readyz judges the read models every
projector shares, so a rollout (or a standby relay) must not wait on it; the alert rules
watch the lags instead. */}}
{{- define "quantus.workerProbes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Pod annotations that let a Prometheus with the usual `prometheus.io/*` relabelling
scrape the pod's /metrics (list: the root context, the port). */}}
{{- define "quantus.scrapeAnnotations" -}}
{{- $ := index . 0 -}}
{{- if $.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/path: /metrics
prometheus.io/port: {{ index . 1 | quote }}
{{- end }}
{{- end -}}

{{- define "quantus.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}
