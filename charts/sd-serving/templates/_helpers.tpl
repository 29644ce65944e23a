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

{{/* Folder-safe form of a model name (volume names are DNS labels). */}}
{{- define "sd-serving.volumeName" -}}
{{- printf "model-%s" (. | lower | replace "." "-" | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
`models` as Settings.models takes it (SD_MODELS in embedded mode, build_app's `models` arg in
kuberay mode): per model its source as the pod sees it, its defaults, and each stage's settings
(the service-wide `stages` with the model's own `stages` on top). Call with (dict "root" $
"pinToPool" bool); renders JSON.
*/}}
{{- define "sd-serving.modelsSettings" -}}
{{- $root := .root -}}
{{- $kuberay := eq $root.Values.mode "kuberay" -}}
{{- $models := dict -}}
{{- $fetched := list -}}
{{- range $name, $model := $root.Values.models -}}
{{- $source := "" -}}
{{- if eq $model.source "embedded" -}}
{{- $family := default "demo" $model.family -}}
{{- $source = ternary "embedded" (printf "embedded-%s" $family) (eq $family "demo") -}}
{{- else if eq $model.source "pvc" -}}
{{- $_ := required (printf "models.%s.pvc.claimName is required when its source is pvc" $name) (dig "pvc" "claimName" "" $model) -}}
{{- $source = printf "/mnt/sd-models/%s" $name -}}
{{- else -}}
{{- $uri := required (printf "models.%s.storageUri is required when its source is storageUri" $name) $model.storageUri -}}
{{- if hasPrefix "hf://" $uri -}}
{{- $source = trimPrefix "hf://" $uri -}}
{{- else if $kuberay -}}
{{- fail (printf "models.%s: kuberay mode has no storage initializer: use source=pvc, or an hf:// storageUri (a Hub id fetched by the pods)" $name) -}}
{{- else -}}
{{- $fetched = append $fetched $name -}}
{{- $source = "/mnt/models" -}}
{{- end -}}
{{- end -}}
{{- $spec := dict "source" $source -}}
{{- if $model.defaults -}}
{{- $defaults := dict -}}
{{- range $key, $field := dict "steps" "steps" "guidanceScale" "guidance_scale" "scheduler" "scheduler" "size" "size" "maxSteps" "max_steps" -}}
{{- if hasKey $model.defaults $key -}}
{{- $_ := set $defaults $field (index $model.defaults $key) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $spec "defaults" $defaults -}}
{{- end -}}
{{- range $key, $field := dict "textEncoder" "text_encoder" "unet" "unet" "vae" "vae" -}}
{{- $stage := merge (deepCopy (dig "stages" $key dict $model)) (deepCopy (index $root.Values.stages $key)) -}}
{{- $_ := set $spec $field (include "sd-serving.stageSettings" (dict "stage" $stage "pinToPool" $.pinToPool) | fromJson) -}}
{{- end -}}
{{- with $model.rollout -}}
{{- $_ := set $spec "rollout" (include "sd-serving.rolloutSettings" (dict "rollout" . "root" $root) | fromJson) -}}
{{- end -}}
{{- $_ := set $models $name $spec -}}
{{- end -}}
{{- if gt (len $fetched) 1 -}}
{{- fail (printf "models %s: KServe's storage initializer fetches one storageUri per pod; give the others a pvc or an hf:// storageUri" (join ", " $fetched)) -}}
{{- end -}}
{{- toJson $models -}}
{{- end -}}

{{/*
A model's `rollout` as Settings' Rollout takes it (JSON): versions by name (each {adapter, scale}),
champion, challenger, canary_percent. Call with (dict "rollout" $rollout "root" $). A version's
adapter comes from the `loras` claim, so one is needed.
*/}}
{{- define "sd-serving.rolloutSettings" -}}
{{- $given := .rollout -}}
{{- $rollout := dict "versions" (default dict $given.versions) -}}
{{- range $name, $version := $rollout.versions -}}
{{- if and $version.adapter (not $.root.Values.loras.claimName) -}}
{{- fail (printf "rollout version %s is adapter %s: set loras.claimName to the claim holding it" $name $version.adapter) -}}
{{- end -}}
{{- end -}}
{{- with $given.champion }}{{ $_ := set $rollout "champion" (toString .) }}{{ end -}}
{{- with $given.challenger }}{{ $_ := set $rollout "challenger" (toString .) }}{{ end -}}
{{- if hasKey $given "canaryPercent" }}{{ $_ := set $rollout "canary_percent" $given.canaryPercent }}{{ end -}}
{{- toJson $rollout -}}
{{- end -}}

{{/* The model requests without a model name get: defaultModel, or the first of `models`. */}}
{{- define "sd-serving.defaultModel" -}}
{{- if .Values.defaultModel -}}
{{- if not (hasKey .Values.models .Values.defaultModel) -}}
{{- fail (printf "defaultModel %q is not a key of models (%s)" .Values.defaultModel (keys .Values.models | sortAlpha | join ", ")) -}}
{{- end -}}
{{- .Values.defaultModel -}}
{{- else -}}
{{- keys .Values.models | sortAlpha | first -}}
{{- end -}}
{{- end -}}

{{/* The storageUri KServe's storage initializer fetches into /mnt/models ("" = none). */}}
{{- define "sd-serving.fetchedStorageUri" -}}
{{- if .Values.models -}}
{{- range $name, $model := .Values.models -}}
{{- if and (eq $model.source "storageUri") (not (hasPrefix "hf://" ($model.storageUri | default ""))) -}}
{{- $model.storageUri -}}
{{- end -}}
{{- end -}}
{{- else if eq .Values.model.source "storageUri" -}}
{{- .Values.model.storageUri | required "model.storageUri is required when model.source=storageUri" -}}
{{- end -}}
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
{{- if hasKey $stage "maxQueuedRequests" -}}
{{- $_ := set $settings "max_queued_requests" $stage.maxQueuedRequests -}}
{{- end -}}
{{- if and .pinToPool $stage.pool -}}
{{- $_ := set $settings "resources" (dict (printf "pool-%s" $stage.pool) 0.001) -}}
{{- end -}}
{{- toJson $settings -}}
{{- end -}}

{{/* Environment shared by every container that runs the Serve app or its settings. */}}
{{- define "sd-serving.appEnv" -}}
{{- if not .Values.models }}
- name: SD_MODEL_NAME
  value: {{ .Values.model.name | quote }}
{{- end }}
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
- name: RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
  value: serving.http.proxy:middlewares
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
{{- if .Values.sharedState.redisSecret }}
- name: SD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sharedState.redisSecret }}
      key: {{ .Values.sharedState.redisKey }}
{{- else if include "sd-serving.chartRedis" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sd-serving.redisPasswordSecret" . }}
      key: {{ .Values.redis.auth.key }}
- name: SD_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" (include "sd-serving.fullname" .) | quote }}
{{- end }}
{{- with .Values.sharedState.imageStoreUrl }}
- name: SD_IMAGE_STORE_URL
  value: {{ . | quote }}
{{- end }}
- name: SD_IMAGE_RETENTION_S
  value: {{ .Values.sharedState.imageRetentionSeconds | quote }}
{{- with .Values.webhooks.allow }}
- name: SD_WEBHOOK_ALLOW
  value: {{ toJson . | quote }}
{{- end }}
{{- if .Values.compileCache.claimName }}
- name: SD_COMPILE_CACHE_DIR
  value: /var/cache/sd-serving/torch-compile
{{- end }}
{{- if .Values.loras.claimName }}
- name: SD_LORA_DIR
  value: /mnt/loras
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
{{- if .Values.compileCache.claimName }}
- name: compile-cache
  persistentVolumeClaim:
    claimName: {{ .Values.compileCache.claimName }}
{{- end }}
{{- if .Values.loras.claimName }}
- name: loras
  persistentVolumeClaim:
    claimName: {{ .Values.loras.claimName }}
    readOnly: true
{{- end }}
{{- if .Values.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ .Values.apiKeys.existingSecret }}
{{- end }}
{{- if and (not .Values.models) (eq .Values.model.source "pvc") }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.claimName | required "model.pvc.claimName is required when model.source=pvc" }}
    readOnly: true
{{- end }}
{{- range $name, $model := .Values.models }}
{{- if eq $model.source "pvc" }}
- name: {{ include "sd-serving.volumeName" $name }}
  persistentVolumeClaim:
    claimName: {{ dig "pvc" "claimName" "" $model | required (printf "models.%s.pvc.claimName is required when its source is pvc" $name) }}
    readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "sd-serving.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if .Values.compileCache.claimName }}
- name: compile-cache
  mountPath: /var/cache/sd-serving/torch-compile
{{- end }}
{{- if .Values.loras.claimName }}
- name: loras
  mountPath: /mnt/loras
  subPath: {{ .Values.loras.subPath | quote }}
  readOnly: true
{{- end }}
{{- if .Values.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/sd-serving/api-keys
  readOnly: true
{{- end }}
{{- if and (not .Values.models) (eq .Values.model.source "pvc") }}
- name: model
  mountPath: /mnt/models
  subPath: {{ .Values.model.pvc.subPath | quote }}
  readOnly: true
{{- end }}
{{- range $name, $model := .Values.models }}
{{- if eq $model.source "pvc" }}
- name: {{ include "sd-serving.volumeName" $name }}
  mountPath: /mnt/sd-models/{{ $name }}
  subPath: {{ dig "pvc" "subPath" "" $model | quote }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/*
Embedded mode runs every stage's minimum replicas inside one predictor pod: refuse values whose
GPU shares cannot fit there, which would otherwise leave the pod waiting forever to be ready.
*/}}
{{- define "sd-serving.checkEmbeddedFit" -}}
{{- $needed := 0.0 -}}
{{- $ingress := .Values.stages.ingress -}}
{{- $needed = addf $needed (mulf $ingress.numGpus $ingress.minReplicas) -}}
{{- if .Values.models -}}
{{- range $name, $spec := include "sd-serving.modelsSettings" (dict "root" $ "pinToPool" false) | fromJson -}}
{{- range $stage := list $spec.text_encoder $spec.unet $spec.vae -}}
{{- $needed = addf $needed (mulf $stage.num_gpus $stage.min_replicas) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- range $key := list "textEncoder" "unet" "vae" -}}
{{- $stage := index $.Values.stages $key -}}
{{- $needed = addf $needed (mulf $stage.numGpus $stage.minReplicas) -}}
{{- end -}}
{{- end -}}
{{- if gt $needed (addf .Values.embedded.gpus 0.001) -}}
{{- fail (printf "embedded mode: the stages' minReplicas x numGpus add up to %.2f GPUs, more than the predictor pod's embedded.gpus=%v" $needed .Values.embedded.gpus) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart deploys its own Redis (templates/redis.yaml) for the shared state. */}}
{{- define "sd-serving.chartRedis" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.sharedState.redisSecret -}}
{{- fail "redis.enabled deploys a Redis and sharedState.redisSecret names another one: set only one" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The Secret holding the chart's Redis password: the user's, or the one the chart generates. */}}
{{- define "sd-serving.redisPasswordSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis-auth" (include "sd-serving.fullname" .)) -}}
{{- end -}}
