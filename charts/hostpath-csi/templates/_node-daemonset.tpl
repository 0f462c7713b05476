{{/*
A node plugin DaemonSet (node-daemonset.yaml renders them). Called with a dict: root (the chart's context), group (empty for the main
DaemonSet, else a poolsByNodeLabel group's value), pools, defaultPool and
expression (a node selector requirement its nodes must also meet, or empty).
*/}}
{{- define "hostpath-csi.nodeDaemonSet" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $pools := .pools }}
{{- $defaultPool := .defaultPool }}
{{- $fullname := include "hostpath-csi.fullname" $root }}
{{- $name := printf "%s-node" $fullname }}
{{- $podLabels := dict "app.kubernetes.io/name" $name }}
{{- with .group }}
{{- $name = printf "%s-%s" $name . }}
{{- $_ := set $podLabels "hostpath-csi.dev/pool-group" . }}
{{- end }}
{{- $affinity := include "hostpath-csi.withNodeRequirement" (dict "affinity" $v.node.affinity "expression" .expression) | fromYaml }}
{{- $kubeletDir := trimSuffix "/" $v.kubeletDir }}
{{- $socketDir := include "hostpath-csi.socketDir" $root }}
{{- $sidecars := $v.sidecars }}
{{- $resources := $v.node.resources }}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "hostpath-csi.labels" $root | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- toYaml $podLabels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- toYaml $podLabels | nindent 8 }}
      {{- with $v.node.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $fullname }}-node
      {{- with $v.node.priorityClassName }}
      priorityClassName: {{ . | quote }}
      {{- end }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.node.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.node.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: driver
          image: {{ include "hostpath-csi.image" $v.image | quote }}
          {{- with $v.image.pullPolicy }}
          imagePullPolicy: {{ . }}
          {{- end }}
          args:
            - serve
            - --endpoint=unix:///csi/csi.sock
            - --node-id=$(NODE_NAME)
            {{- if ne $v.driverName "hostpath-csi.dev" }}
            - {{ printf "--driver-name=%s" $v.driverName | quote }}
            {{- end }}
            {{- range $pools }}
            - {{ printf "--pool=%s=%s" .name .path | quote }}
            {{- end }}
            {{- with $defaultPool }}
            - {{ printf "--default-pool=%s" . | quote }}
            {{- end }}
            {{- if $v.enableQuotas }}
            - --enable-quotas
            {{- end }}
            {{- with $v.memoryBudget }}
            - {{ printf "--memory-budget=%s" . | quote }}
            {{- end }}
            {{- range $v.allowHostPaths }}
            - {{ printf "--allow-host-path=%s" . | quote }}
            {{- end }}
            {{- if ne $kubeletDir "/var/lib/kubelet" }}
            - {{ printf "--kubelet-dir=%s" $kubeletDir | quote }}
            {{- end }}
            {{- with $v.maxVolumes }}
            - {{ printf "--max-volumes=%v" . | quote }}
            {{- end }}
            {{- if ne (toString $v.poolNearlyFullPercent) "" }}
            - {{ printf "--pool-nearly-full-percent=%v" $v.poolNearlyFullPercent | quote }}
            {{- end }}
            {{- if $v.metrics.enabled }}
            # The pod's own address only; the NetworkPolicy admits the
            # scrapers alone to it (docs/deploy.md, "Metrics").
            - {{ printf "--metrics-address=$(POD_IP):%v" $v.metrics.nodePort | quote }}
            {{- if $v.metrics.volumeMetrics }}
            - --volume-metrics
            {{- end }}
            {{- end }}
            - {{ printf "--log-format=%s" $v.logFormat | quote }}
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
          securityContext:
            # Mounts (bind, tmpfs, loop), loop devices and btrfs ioctls need
            # CAP_SYS_ADMIN; growing a mounted ext4 needs CAP_SYS_RESOURCE.
            privileged: true
          ports:
            - {name: healthz, containerPort: {{ $v.node.healthPort }}}
            {{- if $v.metrics.enabled }}
            - {name: metrics, containerPort: {{ $v.metrics.nodePort }}}
            {{- end }}
          livenessProbe:
            httpGet: {path: /healthz, port: healthz}
            initialDelaySeconds: 10
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 3
          {{- with $resources.driver }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: socket-dir, mountPath: /csi}
            # Mounts made here must reach the kubelet (and its pods).
            - {name: kubelet-dir, mountPath: {{ $kubeletDir | quote }}, mountPropagation: Bidirectional}
            {{- range $pools }}
            - {name: {{ printf "pool-%s" .name | quote }}, mountPath: {{ .path | quote }}, mountPropagation: Bidirectional}
            {{- end }}
            {{- range $i, $path := $v.allowHostPaths }}
            - {name: {{ $i | eq 0 | ternary "static" (printf "static-%d" (add1 $i)) }}, mountPath: {{ $path | quote }}, mountPropagation: HostToContainer}
            {{- end }}
            - {name: dev, mountPath: /dev}
        - name: csi-provisioner
          image: {{ include "hostpath-csi.image" $sidecars.provisioner | quote }}
          {{- with $sidecars.provisioner.pullPolicy }}
          imagePullPolicy: {{ . }}
          {{- end }}
          args:
            - --csi-address=/csi/csi.sock
            - --node-deployment=true
            - --enable-capacity
            - --capacity-ownerref-level=0
            - --strict-topology
            - --immediate-topology=false
            - --feature-gates=Topology=true
            - --extra-create-metadata
            - --v=2
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
            - name: NAMESPACE
              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          {{- with $resources.provisioner }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: socket-dir, mountPath: /csi}
        {{- if $sidecars.snapshotter.enabled }}
        - name: csi-snapshotter
          image: {{ include "hostpath-csi.image" $sidecars.snapshotter | quote }}
          {{- with $sidecars.snapshotter.pullPolicy }}
          imagePullPolicy: {{ . }}
          {{- end }}
          args:
            - --csi-address=/csi/csi.sock
            # Only the VolumeSnapshotContents of this node's volumes (which
            # the snapshot-controller labels with the node's name).
            - --node-deployment=true
            - --extra-create-metadata
            - --v=2
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
          {{- with $resources.snapshotter }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: socket-dir, mountPath: /csi}
        {{- end }}
        - name: node-driver-registrar
          image: {{ include "hostpath-csi.image" $sidecars.registrar | quote }}
          {{- with $sidecars.registrar.pullPolicy }}
          imagePullPolicy: {{ . }}
          {{- end }}
          args:
            - --csi-address=/csi/csi.sock
            - {{ printf "--kubelet-registration-path=%s/csi.sock" $socketDir | quote }}
            - --v=2
          {{- with $resources.registrar }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: socket-dir, mountPath: /csi}
            - {name: registration-dir, mountPath: /registration}
        - name: liveness-probe
          image: {{ include "hostpath-csi.image" $sidecars.livenessProbe | quote }}
          {{- with $sidecars.livenessProbe.pullPolicy }}
          imagePullPolicy: {{ . }}
          {{- end }}
          args:
            - --csi-address=/csi/csi.sock
            - {{ printf "--health-port=%v" $v.node.healthPort | quote }}
          {{- with $resources.livenessProbe }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: socket-dir, mountPath: /csi}
      volumes:
        - name: socket-dir
          hostPath: {path: {{ $socketDir | quote }}, type: DirectoryOrCreate}
        - name: registration-dir
          hostPath: {path: {{ printf "%s/plugins_registry" $kubeletDir | quote }}, type: Directory}
        - name: kubelet-dir
          hostPath: {path: {{ $kubeletDir | quote }}, type: Directory}
        # The pools, made on first start.
        {{- range $pools }}
        - name: {{ printf "pool-%s" .name | quote }}
          hostPath: {path: {{ .path | quote }}, type: DirectoryOrCreate}
        {{- end }}
        # Static hostPath PVs may only name paths beneath these directories.
        {{- range $i, $path := $v.allowHostPaths }}
        - name: {{ $i | eq 0 | ternary "static" (printf "static-%d" (add1 $i)) }}
          hostPath: {path: {{ $path | quote }}, type: DirectoryOrCreate}
        {{- end }}
        - name: dev
          hostPath: {path: /dev, type: Directory}
{{- end }}

{{/*
node.affinity with one more node selector requirement ANDed into each of
its required terms (one term of its own when it has none), as YAML.
*/}}
{{- define "hostpath-csi.withNodeRequirement" -}}
{{- $affinity := deepCopy (default dict .affinity) }}
{{- with .expression }}
{{- $nodeAffinity := default dict $affinity.nodeAffinity }}
{{- $required := default dict (get $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution") }}
{{- $terms := list }}
{{- range (default (list dict) $required.nodeSelectorTerms) }}
{{- $terms = append $terms (set (deepCopy .) "matchExpressions" (append (default list .matchExpressions) $.expression)) }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $terms }}
{{- $_ = set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ = set $affinity "nodeAffinity" $nodeAffinity }}
{{- end }}
{{- if $affinity }}{{ toYaml $affinity }}{{ end }}
{{- end }}
