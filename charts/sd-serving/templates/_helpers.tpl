{{/* Names */}}
{{- define "sd-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sd-serving.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "sd-serving.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "sd-serving.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sd-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sd-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sd-serving.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "sd-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sd-serving.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sd-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sd-serving.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The predictor Deployment KServe creates in RawDeployment mode: scaling targets point at it. */}}
{{- define "sd-serving.predictorName" -}}
{{- printf "%s-predictor" (include "sd-serving.fullname" .) -}}
{{- end -}}

{{/* Where the model lives inside the pod. */}}
{{- define "sd-serving.modelPath" -}}
{{- if eq .Values.model.source "embedded" -}}embedded{{- else -}}/mnt/models{{- end -}}
{{- end -}}

{{/*
Placement on a node pool: nodeSelector, tolerations of the pool's taints, and a required node
affinity on the accelerator label. Call with (dict "root" $ "pool" "name"); "" renders nothing.
*/}}
{{- define "sd-serving.placement" -}}
{{- if .pool -}}
{{- $pool := index .root.Values.nodePools .pool | required (printf "nodePools.%s is not defined" .pool) -}}
nodeSelector:
  sd-serving/pool: {{ .pool | quote }}
  {{- range $key, $value := $pool.labels }}
  {{ $key }}: {{ $value | quote }}
  {{- end }}
{{- with $pool.taints }}
tolerations:
  {{- range . }}
  - key: {{ .key | quote }}
    operator: Equal
    value: {{ .value | quote }}
    effect: {{ .effect }}
  {{- end }}
{{- end }}
{{- if and $pool.accelerator (ne $pool.accelerator "none") }}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: sd-serving/accelerator
              operator: In
              values: [{{ $pool.accelerator | quote }}]
{{- end }}
{{- end -}}
{{- end -}}

{{/* Ray Serve settings of one stage as the Settings class takes them (JSON for SD_<STAGE>). */}}
{{- define "sd-serving.stageSettings" -}}
{{- $stage := .stage -}}
{{- $settings := dict
  "num_cpus" $stage.numCpus
  "num_gpus" $stage.numGpus
  "min_replicas" $stage.minReplicas
  "max_replicas" $stage.maxReplicas
  "target_ongoing_requests" $stage.targetOngoingRequests
  "max_ongoing_requests" $stage.maxOngoingRequests
  "upscale_delay_s" $stage.upscaleDelayS
  "downscale_delay_s" $stage.downscaleDelayS -}}
{{- if and .pinToPool $stage.pool -}}
{{- $_ := set $settings "resources" (dict (printf "pool-%s" $stage.pool) 0.001) -}}
{{- end -}}
{{- toJson $settings -}}
{{- end -}}

{{/* Environment shared by every container that runs the Serve app or its settings. */}}
{{- define "sd-serving.appEnv" -}}
- name: SD_MODEL_NAME
  value: {{ .Values.model.name | quote }}
- name: SD_HTTP_HOST
  value: "0.0.0.0"
- name: SD_HTTP_PORT
  value: {{ .Values.service.httpPort | quote }}
- name: SD_GRPC_PORT
  value: {{ .Values.service.grpcPort | quote }}
- name: SD_METRICS_PORT
  value: {{ .Values.service.metricsPort | quote }}
- name: SD_RAY_TEMP_DIR
  value: /tmp/ray
- name: RAY_AUTH_MODE
  value: disabled
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if .Values.apiKeys.existingSecret }}
- name: SD_API_KEYS_FILE
  value: /etc/sd-serving/api-keys/{{ .Values.apiKeys.key }}
{{- end }}
{{- if .Values.webhooks.existingSecret }}
- name: SD_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.webhooks.existingSecret }}
      key: {{ .Values.webhooks.key }}
{{- end }}
{{- range $name, $value := .Values.settings }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "sd-serving.stageEnv" -}}
{{- $root := .root -}}
{{- range $key, $env := dict "ingress" "SD_INGRESS" "textEncoder" "SD_TEXT_ENCODER" "unet" "SD_UNET" "vae" "SD_VAE" }}
- name: {{ $env }}
  value: {{ include "sd-serving.stageSettings" (dict "stage" (index $root.Values.stages $key) "pinToPool" $.pinToPool) | quote }}
{{- end }}
{{- end -}}

{{/* Container resources with nvidia.com/gpu set from a GPU count. Call with (dict "resources" r "gpus" n). */}}
{{- define "sd-serving.resources" -}}
{{- $resources := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- range $part := list "requests" "limits" -}}
{{- $_ := set $resources $part (merge (dict "nvidia.com/gpu" (toString $.gpus)) (get $resources $part | default dict)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{- define "sd-serving.probes" -}}
startupProbe:
  httpGet: {path: /v2/health/ready, port: http}
  periodSeconds: 10
  failureThreshold: 60
readinessProbe:
  httpGet: {path: /v2/health/ready, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet: {path: /v2/health/live, port: http}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Scratch volumes: Ray's session dir and shared memory (root filesystem stays read-only). */}}
{{- define "sd-serving.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 8Gi
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: 4Gi
{{- if .Values.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ .Values.apiKeys.existingSecret }}
{{- end }}
{{- if eq .Values.model.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.claimName | required "model.pvc.claimName is required when model.source=pvc" }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "sd-serving.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if .Values.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/sd-serving/api-keys
  readOnly: true
{{- end }}
{{- if eq .Values.model.source "pvc" }}
- name: model
  mountPath: /mnt/models
  subPath: {{ .Values.model.pvc.subPath | quote }}
  readOnly: true
{{- end }}
{{- end -}}
