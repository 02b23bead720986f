{{/* Names, labels and the values several templates share. */}}

{{- define "apg-mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "apg-mesh.fullname" -}}
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

{{/* Common labels; call with (dict "ctx" $ "component" "meshd"). */}}
{{- define "apg-mesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "apg-mesh.selectorLabels" . }}
{{- end -}}

{{- define "apg-mesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apg-mesh.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "apg-mesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* meshd's Service: proxies and meshctl dial it by this name (one of meshd's server names). */}}
{{- define "apg-mesh.meshdHost" -}}
{{- printf "%s-meshd.%s.svc" (include "apg-mesh.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* DNS names in meshd's serving certificate (--server-names). */}}
{{- define "apg-mesh.serverNames" -}}
{{- $svc := printf "%s-meshd" (include "apg-mesh.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- list "localhost" $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | join "," -}}
{{- end -}}

{{- define "apg-mesh.etcdHeadless" -}}
{{- printf "%s-etcd-headless" (include "apg-mesh.fullname" .) -}}
{{- end -}}

{{/* The etcd endpoints meshd uses (--etcd): every member. */}}
{{- define "apg-mesh.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "external" -}}
{{- if not .Values.etcd.external.endpoints -}}
{{- fail "etcd.mode external needs etcd.external.endpoints (every member's client URL)" -}}
{{- end -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else if eq .Values.etcd.mode "internal" -}}
{{- $full := include "apg-mesh.fullname" . -}}
{{- $headless := include "apg-mesh.etcdHeadless" . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.internal.replicas) -}}
{{- $eps = append $eps (printf "%s-etcd-%d.%s.%s.svc:2379" $full $i $headless $.Release.Namespace) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- fail (printf "etcd.mode must be internal or external, got %q" .Values.etcd.mode) -}}
{{- end -}}
{{- end -}}

{{- define "apg-mesh.caSecret" -}}
{{- default (printf "%s-ca" (include "apg-mesh.fullname" .)) .Values.ca.existingSecret -}}
{{- end -}}

{{- define "apg-mesh.adminSecret" -}}
{{- default (printf "%s-admin-tokens" (include "apg-mesh.fullname" .)) .Values.adminTokens.existingSecret -}}
{{- end -}}

{{/* Where meshd (and the probe) find things inside the meshd container. */}}
{{- define "apg-mesh.dataDir" -}}/var/lib/meshd{{- end -}}

{{/*
An init container that writes an Envoy bootstrap to /bootstrap/envoy.yaml, as
`meshctl token create` + `meshctl bootstrap --token --ca` do (files/envoy-bootstrap.sh).
Call with (dict "ctx" $ "identity" ID "nodeCluster" C "adminPort" N "ttl" T "delta" B).
*/}}
{{- define "apg-mesh.bootstrapInit" -}}
- name: bootstrap
  image: {{ include "apg-mesh.image" .ctx }}
  imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
  command: ["sh", "/etc/mesh-scripts/envoy-bootstrap.sh"]
  env:
    - name: NODE_ID
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: NODE_CLUSTER
      value: {{ .nodeCluster | quote }}
    - name: IDENTITY
      value: {{ .identity | quote }}
    - name: XDS
      value: {{ printf "%s:%d" (include "apg-mesh.meshdHost" .ctx) (int .ctx.Values.meshd.ports.xds) | quote }}
    - name: ENVOY_ADMIN_PORT
      value: {{ .adminPort | quote }}
    - name: TOKEN_TTL
      value: {{ .ttl | quote }}
    - name: DELTA
      value: {{ ternary "1" "" (.delta | default false) | quote }}
    - name: OUT
      value: /bootstrap/envoy.yaml
    - name: MESHCTL_ADMIN
      value: {{ printf "%s:%d" (include "apg-mesh.meshdHost" .ctx) (int .ctx.Values.meshd.ports.admin) | quote }}
    - name: MESHCTL_CA
      value: /etc/mesh-ca/ca.crt
    - name: MESHCTL_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "apg-mesh.adminSecret" .ctx }}
          key: token
  volumeMounts:
    - name: bootstrap
      mountPath: /bootstrap
    - name: mesh-ca
      mountPath: /etc/mesh-ca
      readOnly: true
    - name: mesh-scripts
      mountPath: /etc/mesh-scripts
      readOnly: true
  securityContext:
    {{- include "apg-mesh.containerSecurity" . | nindent 4 }}
{{- end -}}

{{/* The volumes bootstrapInit mounts. */}}
{{- define "apg-mesh.bootstrapVolumes" -}}
- name: bootstrap
  emptyDir: {}
- name: mesh-ca
  secret:
    secretName: {{ include "apg-mesh.caSecret" .ctx }}
    items:
      - key: ca.crt
        path: ca.crt
- name: mesh-scripts
  configMap:
    name: {{ include "apg-mesh.fullname" .ctx }}-scripts
{{- end -}}

{{- define "apg-mesh.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
