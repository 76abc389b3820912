{{/* Base name of every object: the release name, with "muster" added unless it is in it already. */}}
{{- define "muster.fullname" -}}
{{- if contains "muster" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-muster" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "coordinator"). */}}
{{- define "muster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "muster.selectorLabels" . }}
{{- end -}}

{{/* The labels a component's selector matches. */}}
{{- define "muster.selectorLabels" -}}
app.kubernetes.io/name: muster
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository:tag of an image value; the tag defaults to appVersion. */}}
{{- define "muster.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "muster.coordinatorName" -}}{{ include "muster.fullname" . }}-coordinator{{- end -}}
{{- define "muster.etcdName" -}}{{ include "muster.fullname" . }}-etcd{{- end -}}
{{- define "muster.schedulerName" -}}{{ include "muster.fullname" . }}-scheduler{{- end -}}
{{- define "muster.webhookSecret" -}}
{{- if eq .Values.webhook.certs "secret" -}}
{{- required "webhook.existingSecret is required with webhook.certs=secret" .Values.webhook.existingSecret -}}
{{- else -}}
{{- include "muster.fullname" . }}-webhook-tls
{{- end -}}
{{- end -}}

{{/* The DNS names the coordinator's certificate must carry. One Service
     carries both TLS ports, so one certificate serves both: the apiserver
     calls the webhook at <service>.<namespace>.svc:443, and agents dial
     gRPC at the --advertise address, <service>.<namespace>.svc:<grpc>. */}}
{{- define "muster.coordinatorHosts" -}}
{{- $svc := include "muster.coordinatorName" . -}}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) | toJson -}}
{{- end -}}

{{/* "true" when the chart runs its own etcd with TLS. */}}
{{- define "muster.etcdTLS" -}}
{{- if and (not .Values.etcd.external.endpoints) .Values.etcd.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/* Secrets of the chart's etcd: the members' (server and peer) and the coordinator's (client). */}}
{{- define "muster.etcdSecret" -}}
{{- if eq .Values.webhook.certs "secret" -}}
{{- required "etcd.tls.existingSecret is required with webhook.certs=secret and etcd.tls.enabled (or set etcd.tls.enabled=false)" .Values.etcd.tls.existingSecret -}}
{{- else -}}
{{- include "muster.etcdName" . }}-tls
{{- end -}}
{{- end -}}
{{- define "muster.etcdClientSecret" -}}
{{- if eq .Values.webhook.certs "secret" -}}
{{- required "etcd.tls.existingClientSecret is required with webhook.certs=secret and etcd.tls.enabled (or set etcd.tls.enabled=false)" .Values.etcd.tls.existingClientSecret -}}
{{- else -}}
{{- include "muster.etcdName" . }}-client-tls
{{- end -}}
{{- end -}}

{{/* The DNS names etcd's member certificate carries: every member's
     (<pod>.<service>.<namespace>.svc: peers and the coordinator dial
     those), the same under the cluster domain (what a reverse lookup of a
     member's IP answers: etcd checks a peer's client certificate against
     its address), the headless Service's (it resolves to every member),
     and localhost for etcdctl in a member's pod. */}}
{{- define "muster.etcdHosts" -}}
{{- $name := include "muster.etcdName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list (printf "*.%s.%s.svc" $name $ns) (printf "*.%s.%s.svc.%s" $name $ns .Values.clusterDomain) (printf "%s.%s.svc" $name $ns) "localhost" | toJson -}}
{{- end -}}

{{/* Comma-separated etcd client URLs: the external ones, or every member of the chart's StatefulSet. */}}
{{- define "muster.etcdEndpoints" -}}
{{- if .Values.etcd.external.endpoints -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $name := include "muster.etcdName" . -}}
{{- $scheme := ternary "https" "http" (eq (include "muster.etcdTLS" .) "true") -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s.%s.svc:2379" $scheme $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}
{{- end -}}

{{- define "muster.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "muster.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
