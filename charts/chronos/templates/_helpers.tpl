{{/* The release's full name: "chronos-operator" for a release named "chronos". */}}
{{- define "chronos.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s-operator" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chronos.selectorLabels" -}}
app.kubernetes.io/name: chronos-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chronos.labels" -}}
{{ include "chronos.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: chronos
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "chronos.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chronos.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "chronos.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The engine image: engine.image.* when set, else the operator's own image. */}}
{{- define "chronos.engineImage" -}}
{{- $e := default dict .Values.engine.image -}}
{{- printf "%s:%s" (default .Values.image.repository $e.repository) (default (default .Chart.AppVersion .Values.image.tag) $e.tag) -}}
{{- end -}}

{{/* The watched namespaces: watchNamespaces, plus watchNamespace (the older single value), without repeats; empty = every namespace. */}}
{{- define "chronos.watchedNamespaces" -}}
{{- $all := .Values.watchNamespaces | default list -}}
{{- if .Values.watchNamespace }}{{ $all = append $all .Values.watchNamespace }}{{ end -}}
{{- $all | uniq | join "," -}}
{{- end -}}

{{/* RBAC rules on the namespaced objects the operator manages (a ClusterRole's, or a Role's in each watched namespace). */}}
{{- define "chronos.namespacedRules" }}
  # get: the MongoDB URI and S3 keys a ChronosDatabase references (used only when the Secret is
  # labelled chronos.dev/credentials=true), and objects checked before a delete.
  # create: each database's tokens Secret, once. patch: the engine's config Secret (server-side
  # apply), a scope missing from a tokens Secret. delete: an engine's config Secret, only when it
  # carries the operator's label and owner.
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, create, patch, delete]
  # Apply the engine's Service (server-side apply creates it when missing); get + delete it with
  # its engine, only when it is the operator's.
  - apiGroups: [""]
    resources: [services]
    verbs: [get, patch, delete]
  # Apply the engine's Deployment, read and watch the ones it owns (readiness); delete likewise.
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, patch, delete]
  # Each engine's NetworkPolicy: applied with it, deleted with it.
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, patch, delete]
  # Kubernetes Events about what the controllers did.
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
{{- end }}
