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

{{/* The DNS names the webhook's certificate must carry: the apiserver calls <service>.<namespace>.svc. */}}
{{- define "muster.webhookHosts" -}}
{{- $svc := include "muster.coordinatorName" . -}}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) | toJson -}}
{{- end -}}

{{/* Comma-separated etcd client URLs: the external ones, or every member of the chart's StatefulSet. */}}
{{- define "muster.etcdEndpoints" -}}
{{- if .Values.etcd.external.endpoints -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $name := include "muster.etcdName" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
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
