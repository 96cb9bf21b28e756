{{/* Labels common to every object. */}}
{{- define "spanprof.labels" -}}
app.kubernetes.io/part-of: spanprof
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* "<registry>/<name>:<tag>" of one image; call with (list $ "operator"). */}}
{{- define "spanprof.image" -}}
{{- $root := index . 0 -}}
{{- $name := index $root.Values.image (index . 1) -}}
{{- $tag := $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $name $tag -}}
{{- end }}

{{/* In-cluster URL of the server. */}}
{{- define "spanprof.serverUrl" -}}
{{- printf "http://spanprof-server.%s.svc:%d" .Release.Namespace (int .Values.server.port) -}}
{{- end }}

{{/* Pod security context meeting the restricted Pod Security Standard. */}}
{{- define "spanprof.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context meeting the restricted Pod Security Standard. */}}
{{- define "spanprof.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
