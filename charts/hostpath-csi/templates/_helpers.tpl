{{/*
Names. The objects are <fullname>-node, <fullname>-controller, …; with the
release called hostpath-csi they are the names of deploy/kubernetes.
fullname is cut to 42 characters so that the longest suffix still fits a
63-character name.
*/}}
{{- define "hostpath-csi.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The labels Helm charts conventionally put on every object, on its own
metadata only: selectors (which cannot change once applied) and pod labels
stay those of deploy/kubernetes.
*/}}
{{- define "hostpath-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* An image reference from {repository, tag}. */}}
{{- define "hostpath-csi.image" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* The plugin's socket directory on the node. */}}
{{- define "hostpath-csi.socketDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName }}
{{- end }}

{{/* Every StorageClass: storageClasses then extraStorageClasses. */}}
{{- define "hostpath-csi.storageClasses" -}}
{{- toYaml (dict "classes" (concat .Values.storageClasses .Values.extraStorageClasses)) }}
{{- end }}

{{/*
Checks of the values the driver would otherwise refuse at start, or that
would make objects Kubernetes rejects; rendered by the DaemonSet's template.
*/}}
{{- define "hostpath-csi.validate" -}}
{{- include "hostpath-csi.validatePools" (dict "where" "" "pools" .Values.pools "defaultPool" .Values.defaultPool) }}
{{- $names := list }}
{{- range .Values.pools }}{{ $names = append $names .name }}{{ end }}
{{- $byLabel := .Values.poolsByNodeLabel }}
{{- if not (regexMatch "^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$" (toString $byLabel.label)) }}
{{- fail (printf "poolsByNodeLabel.label %q is not a label key" (toString $byLabel.label)) }}
{{- end }}
{{- $groups := list }}
{{- $fullname := include "hostpath-csi.fullname" . }}
{{- range $byLabel.groups }}
{{- $group := toString .value }}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" $group) }}
{{- fail (printf "poolsByNodeLabel.groups: value %q: expected 1 to 63 characters of [a-z0-9-], a letter or digit at both ends" $group) }}
{{- end }}
{{- if gt (len (printf "%s-node-%s" $fullname $group)) 63 }}
{{- fail (printf "poolsByNodeLabel.groups: value %s makes the DaemonSet name %s-node-%s longer than 63 characters" $group $fullname $group) }}
{{- end }}
{{- if has $group $groups }}
{{- fail (printf "poolsByNodeLabel.groups: %s appears twice" $group) }}
{{- end }}
{{- $groups = append $groups $group }}
{{- include "hostpath-csi.validatePools" (dict "where" (printf "poolsByNodeLabel.groups[%s]." $group) "pools" .pools "defaultPool" .defaultPool) }}
{{- range .pools }}{{ if not (has .name $names) }}{{ $names = append $names .name }}{{ end }}{{ end }}
{{- end }}
{{- range .Values.allowHostPaths }}
{{- if or (not (isAbs (toString .))) (ne (clean (toString .)) (toString .)) (eq (toString .) "/") }}
{{- fail (printf "allowHostPaths: %q must be a clean absolute path other than /" (toString .)) }}
{{- end }}
{{- end }}
{{- if or (not (isAbs (toString .Values.kubeletDir))) (ne (clean .Values.kubeletDir) (trimSuffix "/" .Values.kubeletDir)) }}
{{- fail "kubeletDir must be a clean absolute path" }}
{{- end }}
{{- if lt (int .Values.nodeLoss.graceSeconds) 10 }}
{{- fail "nodeLoss.graceSeconds must be at least 10" }}
{{- end }}
{{- if and .Values.metrics.volumeMetrics (not .Values.metrics.enabled) }}
{{- fail "metrics.volumeMetrics needs metrics.enabled" }}
{{- end }}
{{- if and .Values.snapshotClass.enabled (not .Values.sidecars.snapshotter.enabled) }}
{{- fail "snapshotClass.enabled needs sidecars.snapshotter.enabled: without csi-snapshotter no snapshot of the class is ever taken" }}
{{- end }}
{{- $defaults := 0 }}
{{- $classes := list }}
{{- range (include "hostpath-csi.storageClasses" . | fromYaml).classes }}
{{- if has .name $classes }}
{{- fail (printf "storageClasses: %s appears twice" .name) }}
{{- end }}
{{- $classes = append $classes .name }}
{{- if .default }}{{ $defaults = add1 $defaults }}{{ end }}
{{- $pool := (default dict .parameters).pool }}
{{- if and $pool (not (has $pool $names)) }}
{{- fail (printf "StorageClass %s: pool %s is not one of pools or poolsByNodeLabel's (%s)" .name $pool (join ", " $names)) }}
{{- end }}
{{- end }}
{{- if gt $defaults 1 }}
{{- fail "storageClasses: more than one is the default class" }}
{{- end }}
{{- end }}

{{/*
Checks of one list of pools and its default pool (`pools` and defaultPool,
or a poolsByNodeLabel group's); where: the values' path to them.
*/}}
{{- define "hostpath-csi.validatePools" -}}
{{- $where := .where }}
{{- if not .pools }}
{{- fail (printf "%spools: the node plugin needs at least one pool" $where) }}
{{- end }}
{{- $names := list }}
{{- range .pools }}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,56}[a-z0-9])?$" (toString .name)) }}
{{- fail (printf "%spools: name %q: expected 1 to 58 characters of [a-z0-9-], a letter or digit at both ends" $where (toString .name)) }}
{{- end }}
{{- if or (not (isAbs (toString .path))) (ne (clean (toString .path)) (toString .path)) }}
{{- fail (printf "%spools: %s: path %q is not a clean absolute path" $where .name (toString .path)) }}
{{- end }}
{{- if has .name $names }}
{{- fail (printf "%spools: %s appears twice" $where .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- if and .defaultPool (not (has .defaultPool $names)) }}
{{- fail (printf "%sdefaultPool %s is not one of its pools (%s)" $where .defaultPool (join ", " $names)) }}
{{- end }}
{{- end }}
