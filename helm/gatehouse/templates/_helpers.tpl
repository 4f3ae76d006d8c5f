{{/* Chart name or nameOverride, cut to 63 characters, the limit of a label value. */}}
{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: fullnameOverride, or the release name with the chart name unless it already contains it. */}}
{{- define "gatehouse.fullname" -}}
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

{{/* Value of the helm.sh/chart label: chart name and version. */}}
{{- define "gatehouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the pods of this release. Each workload adds its component. */}}
{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object: the selector labels, versions, and commonLabels. */}}
{{- define "gatehouse.labels" -}}
{{ include "gatehouse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gatehouse
helm.sh/chart: {{ include "gatehouse.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Metadata annotations from commonAnnotations, as a block for `with`. */}}
{{- define "gatehouse.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* Name of the ServiceAccount the pods use. */}}
{{- define "gatehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gatehouse.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference: registry/repository, then @digest or :tag (appVersion when the tag is empty). */}}
{{- define "gatehouse.image" -}}
{{- $repository := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repository = printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with mysql-password, redis-url and the *.pem signing keys. */}}
{{- define "gatehouse.secretName" -}}
{{- default (include "gatehouse.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* Name of the PersistentVolumeClaim that holds the backups. */}}
{{- define "gatehouse.backupClaimName" -}}
{{- default (printf "%s-backups" (include "gatehouse.fullname" .)) .Values.cronJobs.backup.persistence.existingClaim -}}
{{- end -}}

{{/* Container port: the port of GATEHOUSE_BIND. */}}
{{- define "gatehouse.httpPort" -}}
{{- .Values.containerPorts.http | int -}}
{{- end -}}

{{/* Paths of one ingress.hosts entry: its own paths, or ingress.paths when it lists none. */}}
{{- define "gatehouse.ingress.hostPaths" -}}
{{- toYaml (default .root.Values.ingress.paths .host.paths) -}}
{{- end -}}

{{/*
The cluster-internal routes (/metrics, /health, /ready, /openapi.json) that
the Ingress routes to Gatehouse, comma-separated, or empty. It follows the
Kubernetes matching rules: Exact matches the same path, and Prefix matches
whole path segments, so / matches everything and /v1 does not match /v1x.
NOTE: ImplementationSpecific is checked as Prefix, so a regular-expression
path (such as ingress-nginx's use-regex) is not recognised.
*/}}
{{- define "gatehouse.ingress.internalRoutes" -}}
{{- $published := list -}}
{{- range $host := .Values.ingress.hosts -}}
{{- range $entry := include "gatehouse.ingress.hostPaths" (dict "host" $host "root" $) | fromYamlArray -}}
{{- $prefix := trimSuffix "/" $entry.path -}}
{{- range $route := list "/metrics" "/health" "/ready" "/openapi.json" -}}
{{- if eq $entry.pathType "Exact" -}}
{{- if eq $entry.path $route -}}
{{- $published = append $published $route -}}
{{- end -}}
{{- else if or (eq $prefix "") (eq $prefix $route) (hasPrefix (printf "%s/" $prefix) $route) -}}
{{- $published = append $published $route -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join ", " (uniq $published) -}}
{{- end -}}

{{/* Where the signing keys are mounted: GATEHOUSE_KEYS_DIR. */}}
{{- define "gatehouse.keysDir" -}}
/etc/gatehouse/keys
{{- end -}}

{{/* Where the CA bundle and the client certificate of TLS to MySQL are mounted. */}}
{{- define "gatehouse.mysqlTlsDir" -}}
/etc/gatehouse/mysql-tls
{{- end -}}

{{/* "true" when mysqlTls names a Secret or a ConfigMap with the CA bundle, else empty. */}}
{{- define "gatehouse.mysqlTlsCa" -}}
{{- if or .Values.mysqlTls.ca.secretName .Values.mysqlTls.ca.configMapName -}}
true
{{- end -}}
{{- end -}}

{{/*
The projected volume with the CA bundle and the client certificate of TLS to
MySQL, or nothing when neither is set. Every pod that loads the settings mounts
it, Jobs included, because config.py checks at start that the files exist.
*/}}
{{- define "gatehouse.mysqlTlsVolume" -}}
{{- $tls := .Values.mysqlTls -}}
{{- if or (include "gatehouse.mysqlTlsCa" .) $tls.clientCertificate.secretName -}}
- name: mysql-tls
  projected:
    defaultMode: 0440
    sources:
      {{- if $tls.ca.secretName }}
      - secret:
          name: {{ $tls.ca.secretName }}
          items:
            - key: {{ $tls.ca.key }}
              path: ca.pem
      {{- else if $tls.ca.configMapName }}
      - configMap:
          name: {{ $tls.ca.configMapName }}
          items:
            - key: {{ $tls.ca.key }}
              path: ca.pem
      {{- end }}
      {{- with $tls.clientCertificate.secretName }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $tls.clientCertificate.certificateKey }}
              path: client.pem
            - key: {{ $tls.clientCertificate.privateKeyKey }}
              path: client.key
      {{- end }}
{{- end -}}
{{- end -}}

{{/* The mount of gatehouse.mysqlTlsVolume, or nothing when there is no such volume. */}}
{{- define "gatehouse.mysqlTlsMount" -}}
{{- if include "gatehouse.mysqlTlsVolume" . -}}
- name: mysql-tls
  mountPath: {{ include "gatehouse.mysqlTlsDir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/*
A value as an environment variable string. YAML and JSON numbers arrive as
floats, which would print 2592000 as 2.592e+06: whole numbers print as
integers, everything else as it is.
*/}}
{{- define "gatehouse.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
ConfigMap data: each config value as GATEHOUSE_<NAME> (config.mysqlPoolSize
becomes GATEHOUSE_MYSQL_POOL_SIZE), the settings the chart owns (the bind
address, the key directory and the paths of the mounted TLS files), then
extraEnv. Shared by the ConfigMap and its copy for the migration hook.
*/}}
{{- define "gatehouse.configData" -}}
GATEHOUSE_BIND: {{ printf "0.0.0.0:%s" (include "gatehouse.httpPort" .) | quote }}
GATEHOUSE_KEYS_DIR: {{ include "gatehouse.keysDir" . | quote }}
{{- if include "gatehouse.mysqlTlsCa" . }}
GATEHOUSE_MYSQL_TLS_CA: {{ printf "%s/ca.pem" (include "gatehouse.mysqlTlsDir" .) | quote }}
{{- end }}
{{- if .Values.mysqlTls.clientCertificate.secretName }}
GATEHOUSE_MYSQL_TLS_CERT: {{ printf "%s/client.pem" (include "gatehouse.mysqlTlsDir" .) | quote }}
GATEHOUSE_MYSQL_TLS_KEY: {{ printf "%s/client.key" (include "gatehouse.mysqlTlsDir" .) | quote }}
{{- end }}
{{- range $name, $value := .Values.config }}
{{ printf "GATEHOUSE_%s" ($name | snakecase | upper) }}: {{ include "gatehouse.envValue" $value | quote }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
{{ $name }}: {{ include "gatehouse.envValue" $value | quote }}
{{- end }}
{{- end -}}

{{/* Secret data created from the secret.* values. Shared by the Secret and its copy for the migration hook. */}}
{{- define "gatehouse.secretData" -}}
mysql-password: {{ .Values.secret.mysqlPassword | b64enc | quote }}
{{- if eq .Values.config.redisMode "sentinel" }}
redis-password: {{ .Values.secret.redisPassword | b64enc | quote }}
redis-sentinel-password: {{ .Values.secret.redisSentinelPassword | b64enc | quote }}
{{- else }}
redis-url: {{ .Values.secret.redisUrl | b64enc | quote }}
{{- end }}
{{- range $file, $pem := .Values.secret.signingKeys }}
{{ $file }}: {{ $pem | b64enc | quote }}
{{- end }}
{{- end -}}

{{/*
Environment of every Gatehouse container: the secrets by reference, then
extraEnvVars. Sentinel mode takes the two Redis passwords instead of the URL,
and an existing Secret may leave either out when the servers need none.
*/}}
{{- define "gatehouse.secretEnv" -}}
- name: GATEHOUSE_MYSQL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: mysql-password
{{- if eq .root.Values.config.redisMode "sentinel" }}
- name: GATEHOUSE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: redis-password
      optional: true
- name: GATEHOUSE_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: redis-sentinel-password
      optional: true
{{- else }}
- name: GATEHOUSE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: redis-url
{{- end }}
{{- with .root.Values.extraEnvVars }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Pod spec of a Job that runs one `gatehouse` command, for the migration hook
and the CronJobs. Takes a dict: root (the chart context), component,
serviceAccountName, configMapName, secretName, resources, activeDeadlineSeconds, backoffLimit,
containerName and args (the command line after `gatehouse`), optionally
initContainerName and initArgs (a command that runs first, as an init
container), and backups (true mounts the backup claim).
*/}}
{{- define "gatehouse.jobTemplate" -}}
{{- $root := .root -}}
backoffLimit: {{ .backoffLimit }}
activeDeadlineSeconds: {{ .activeDeadlineSeconds }}
template:
  metadata:
    labels:
      {{- include "gatehouse.labels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ .serviceAccountName }}
    automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
    enableServiceLinks: false
    {{- with $root.Values.image.pullSecrets }}
    imagePullSecrets:
      {{- range . }}
      - name: {{ . }}
      {{- end }}
    {{- end }}
    securityContext:
      {{- toYaml $root.Values.podSecurityContext | nindent 6 }}
    {{- with $root.Values.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $root.Values.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- $container := dict "root" $root "configMapName" .configMapName "secretName" .secretName "resources" .resources "backups" .backups }}
    {{- if .initArgs }}
    initContainers:
      {{- include "gatehouse.jobContainer" (merge (dict "name" .initContainerName "args" .initArgs) $container) | nindent 6 }}
    {{- end }}
    containers:
      {{- include "gatehouse.jobContainer" (merge (dict "name" .containerName "args" .args) $container) | nindent 6 }}
    volumes:
      - name: keys
        secret:
          secretName: {{ .secretName }}
          defaultMode: 0440
      - name: tmp
        emptyDir: {}
      {{- if include "gatehouse.logDir" $root }}
      - name: logs
        emptyDir: {}
      {{- end }}
      {{- if .backups }}
      - name: backups
        persistentVolumeClaim:
          claimName: {{ include "gatehouse.backupClaimName" $root }}
      {{- end }}
      {{- with include "gatehouse.mysqlTlsVolume" $root }}
      {{- . | nindent 6 }}
      {{- end }}
{{- end -}}

{{/* One container of a Job pod running `gatehouse <args>`. gatehouse.jobTemplate describes the dict it takes. */}}
{{- define "gatehouse.jobContainer" -}}
- name: {{ .name }}
  image: {{ include "gatehouse.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - gatehouse
    {{- range .args }}
    - {{ . | quote }}
    {{- end }}
  envFrom:
    - configMapRef:
        name: {{ .configMapName }}
  env:
    {{- include "gatehouse.secretEnv" . | nindent 4 }}
    {{- if .backups }}
    - name: GATEHOUSE_BACKUP_DIR
      value: {{ include "gatehouse.backupDir" .root | quote }}
    {{- end }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: keys
      mountPath: {{ include "gatehouse.keysDir" .root }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- with include "gatehouse.logDir" .root }}
    - name: logs
      mountPath: {{ . }}
    {{- end }}
    {{- if .backups }}
    - name: backups
      mountPath: {{ include "gatehouse.backupDir" .root }}
    {{- end }}
    {{- with include "gatehouse.mysqlTlsMount" .root }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
Directory of the log file (GATEHOUSE_LOG_FILE, set through extraEnv) that needs
a volume of its own: empty when there is no log file, or when it lies directly
in /tmp, which is a volume already. config.py requires the directory to exist,
so every pod that loads the settings mounts it, Jobs included.
*/}}
{{- define "gatehouse.logDir" -}}
{{- with .Values.extraEnv.GATEHOUSE_LOG_FILE -}}
{{- if ne (dir .) "/tmp" -}}
{{- dir . -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where the backup claim is mounted in the backup Job. */}}
{{- define "gatehouse.backupDir" -}}
/var/backups/gatehouse
{{- end -}}

{{/*
Check values that depend on each other, which values.schema.json cannot
express, and fail rendering with the value paths and the fix.
*/}}
{{- define "gatehouse.validateValues" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "gatehouse.validateValues.gracePeriod" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.startupProbe" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.pdb" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.sentinel" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.keyPublish" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.mysqlTls" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.ingressProxy" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.extraEnv" .) -}}
{{- $messages = append $messages (include "gatehouse.validateValues.scrapeTimeout" .) -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds must cover the whole shutdown. The kubelet
counts it from the start of the preStop hook; after the pause, gunicorn's
workers keep serving for the drain delay and then get the graceful timeout to
finish their requests. A pod killed sooner cuts off requests in flight.
*/}}
{{- define "gatehouse.validateValues.gracePeriod" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $pause := int .Values.lifecycle.preStopSleepSeconds -}}
{{- $drain := ceil .Values.config.shutdownDrainSeconds | int -}}
{{- $graceful := int .Values.config.gracefulTimeout -}}
{{- $shutdown := add $pause $drain $graceful -}}
{{- if le $grace $shutdown -}}
gatehouse: terminationGracePeriodSeconds
    terminationGracePeriodSeconds ({{ $grace }}) must be greater than lifecycle.preStopSleepSeconds ({{ $pause }}) + config.shutdownDrainSeconds ({{ include "gatehouse.envValue" .Values.config.shutdownDrainSeconds }}) + config.gracefulTimeout ({{ $graceful }}) = {{ $shutdown }}, or in-flight requests are cut off at shutdown. Set terminationGracePeriodSeconds to at least {{ add $shutdown 1 }}, or lower one of the others.
{{- end -}}
{{- end -}}

{{/*
The master runs the start-up checks before it binds the port, retrying MySQL
and Redis for up to config.startupTimeoutSeconds. A startup probe that gives
up sooner restarts pods that would have come up.
*/}}
{{- define "gatehouse.validateValues.startupProbe" -}}
{{- if .Values.startupProbe.enabled -}}
{{- $budget := add .Values.startupProbe.initialDelaySeconds (mul .Values.startupProbe.periodSeconds .Values.startupProbe.failureThreshold) -}}
{{- $checks := ceil .Values.config.startupTimeoutSeconds | int -}}
{{- if le (int $budget) $checks -}}
gatehouse: startupProbe
    startupProbe allows {{ $budget }} seconds (initialDelaySeconds + periodSeconds x failureThreshold), but the start-up checks may take config.startupTimeoutSeconds ({{ .Values.config.startupTimeoutSeconds }}). Raise startupProbe.failureThreshold or periodSeconds, or lower config.startupTimeoutSeconds.
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Behind an Ingress every request comes from the controller's address. With no
trusted proxy, all clients share one rate limit, and the first automatic ban
blocks every one of them.
*/}}
{{- define "gatehouse.validateValues.ingressProxy" -}}
{{- if and .Values.ingress.enabled (eq (int .Values.config.trustedProxyCount) 0) -}}
gatehouse: config.trustedProxyCount
    ingress.enabled is true but config.trustedProxyCount is 0, so Gatehouse would see every client as the ingress controller: one rate limit for all of them, and one automatic ban would block them all. Set config.trustedProxyCount to the number of proxies in front of the pods, 1 for an ingress controller alone.
{{- end -}}
{{- end -}}

{{/*
extraEnv adds variables to the ConfigMap after the ones the chart writes, and a
name that repeats one of those gave the ConfigMap two values for one key: which one
the pods got depended on the parser of the manifest.
*/}}
{{- define "gatehouse.validateValues.extraEnv" -}}
{{- $owned := dict "GATEHOUSE_BIND" "service.port" "GATEHOUSE_KEYS_DIR" "signingKeys" -}}
{{- range $name, $_ := .Values.config -}}
{{- $_ := set $owned (printf "GATEHOUSE_%s" ($name | snakecase | upper)) (printf "config.%s" $name) -}}
{{- end -}}
{{- range $name := list "GATEHOUSE_MYSQL_TLS_CA" "GATEHOUSE_MYSQL_TLS_CERT" "GATEHOUSE_MYSQL_TLS_KEY" -}}
{{- $_ := set $owned $name "mysqlTls" -}}
{{- end -}}
{{- /* Set as container env entries, which would override the ConfigMap's value without a word. */ -}}
{{- range $name := list "GATEHOUSE_MYSQL_PASSWORD" "GATEHOUSE_REDIS_URL" "GATEHOUSE_REDIS_PASSWORD" "GATEHOUSE_REDIS_SENTINEL_PASSWORD" -}}
{{- $_ := set $owned $name "secret or secret.existingSecret" -}}
{{- end -}}
{{- $_ := set $owned "GATEHOUSE_PASSWORD_BLOCKLIST_FILE" "passwordBlocklist" -}}
{{- $_ := set $owned "GATEHOUSE_BACKUP_DIR" "cronJobs.backup.persistence" -}}
{{- $_ := set $owned "PROMETHEUS_MULTIPROC_DIR" "the chart's metrics volume" -}}
{{- $repeated := list -}}
{{- range $name, $_ := .Values.extraEnv -}}
{{- if hasKey $owned $name -}}
{{- $repeated = append $repeated (printf "%s (set it through %s)" $name (get $owned $name)) -}}
{{- end -}}
{{- end -}}
{{- if $repeated -}}
gatehouse: extraEnv
    extraEnv repeats variables that the chart sets from other values: {{ join ", " $repeated }}. The ConfigMap would hold two values for one key; set each through the value named and remove it from extraEnv.
{{- end -}}
{{- end -}}

{{/*
Prometheus refuses a scrape timeout longer than the scrape interval, so the
Prometheus Operator would drop the ServiceMonitor and nothing would scrape the
pods. Text that is no Prometheus duration is left to Prometheus.
*/}}
{{- define "gatehouse.validateValues.scrapeTimeout" -}}
{{- $monitor := .Values.metrics.serviceMonitor -}}
{{- $interval := include "gatehouse.durationSeconds" $monitor.interval -}}
{{- $timeout := include "gatehouse.durationSeconds" $monitor.scrapeTimeout -}}
{{- if and $monitor.enabled $interval $timeout (gt (float64 $timeout) (float64 $interval)) -}}
gatehouse: metrics.serviceMonitor.scrapeTimeout
    metrics.serviceMonitor.scrapeTimeout ({{ $monitor.scrapeTimeout }}) is longer than metrics.serviceMonitor.interval ({{ $monitor.interval }}), which Prometheus refuses. Set the timeout at or below the interval.
{{- end -}}
{{- end -}}

{{/* Seconds of a Prometheus duration (500ms, 10s, 1m30s, 2h, 1d), or "" for text that is none. */}}
{{- define "gatehouse.durationSeconds" -}}
{{- $text := toString . -}}
{{- if regexMatch "^([0-9]+(ms|s|m|h|d|w|y))+$" $text -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 "y" 31536000.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" $text -1 -}}
{{- $number := regexFind "^[0-9]+" . | float64 -}}
{{- $total = addf $total (mulf $number (get $units (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
{{- end -}}

{{/* A PodDisruptionBudget takes minAvailable or maxUnavailable, not both. */}}
{{- define "gatehouse.validateValues.pdb" -}}
{{- if and .Values.pdb.enabled (ne (toString .Values.pdb.minAvailable) "") (ne (toString .Values.pdb.maxUnavailable) "") -}}
gatehouse: pdb
    pdb.minAvailable ({{ .Values.pdb.minAvailable }}) and pdb.maxUnavailable ({{ .Values.pdb.maxUnavailable }}) are both set, but a PodDisruptionBudget takes only one of them. Set the other to "".
{{- end -}}
{{- end -}}

{{/* Sentinel mode needs the Sentinels' addresses and the master name, or no pod starts. */}}
{{- define "gatehouse.validateValues.sentinel" -}}
{{- if and (eq .Values.config.redisMode "sentinel") (or (not .Values.config.redisSentinels) (not .Values.config.redisSentinelService)) -}}
gatehouse: config.redisMode
    config.redisMode is sentinel, which needs config.redisSentinels (host:port of each Sentinel, comma-separated) and config.redisSentinelService (the master name the Sentinels monitor). Set both, or set config.redisMode to standalone and use secret.redisUrl.
{{- end -}}
{{- end -}}

{{/*
A new signing key must stay in the JWKS for at least as long as verifiers may
cache it before it signs, or they reject its tokens. The service checks the same
rule at start; checking it here fails the upgrade before any pod is replaced.
*/}}
{{- define "gatehouse.validateValues.keyPublish" -}}
{{- $publish := int .Values.config.keyPublishSeconds -}}
{{- $maxAge := int .Values.config.jwksMaxAgeSeconds -}}
{{- if and (gt $publish 0) (lt $publish $maxAge) -}}
gatehouse: config.keyPublishSeconds
    config.keyPublishSeconds ({{ $publish }}) is below config.jwksMaxAgeSeconds ({{ $maxAge }}), so verifiers holding a cached JWKS would reject the tokens of a new key. Set config.keyPublishSeconds to at least {{ $maxAge }}, or to 0 to sign with a new key at once.
{{- end -}}
{{- end -}}

{{/*
TLS to MySQL: the verify modes need a CA bundle, from a Secret or a ConfigMap
but not both. The service rejects a CA bundle in the modes that check no
certificate, and a client certificate in the modes that may connect without
TLS; checking here fails the upgrade before any pod is replaced.
*/}}
{{- define "gatehouse.validateValues.mysqlTls" -}}
{{- $mode := .Values.config.mysqlTlsMode -}}
{{- $tls := .Values.mysqlTls -}}
{{- $verifies := has $mode (list "verify_ca" "verify_identity") -}}
{{- if and $tls.ca.secretName $tls.ca.configMapName -}}
gatehouse: mysqlTls.ca
    mysqlTls.ca.secretName ({{ $tls.ca.secretName }}) and mysqlTls.ca.configMapName ({{ $tls.ca.configMapName }}) are both set, but the CA bundle comes from one object. Set the other to "".
{{- else if and $verifies (not (include "gatehouse.mysqlTlsCa" .)) -}}
gatehouse: config.mysqlTlsMode
    config.mysqlTlsMode is {{ $mode }}, which checks the server's certificate against a CA bundle, but neither mysqlTls.ca.secretName nor mysqlTls.ca.configMapName is set. Set one of them to the object that holds the bundle, or choose another mode.
{{- else if and (not $verifies) (include "gatehouse.mysqlTlsCa" .) -}}
gatehouse: mysqlTls.ca
    mysqlTls.ca names a CA bundle, but config.mysqlTlsMode is {{ $mode }}, which checks no certificate. Set config.mysqlTlsMode to verify_ca or verify_identity, or set mysqlTls.ca.secretName and mysqlTls.ca.configMapName to "".
{{- else if and $tls.clientCertificate.secretName (has $mode (list "disabled" "preferred")) -}}
gatehouse: mysqlTls.clientCertificate
    mysqlTls.clientCertificate.secretName ({{ $tls.clientCertificate.secretName }}) is set, but config.mysqlTlsMode is {{ $mode }}, which may connect without TLS and so without the certificate. Set config.mysqlTlsMode to required, verify_ca or verify_identity, or set mysqlTls.clientCertificate.secretName to "".
{{- end -}}
{{- end -}}
