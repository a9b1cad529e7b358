{{- define "prp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "prp-operator.fullname" -}}
{{- if contains (include "prp-operator.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "prp-operator.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "prp-operator.labels" -}}
app.kubernetes.io/name: {{ include "prp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "prp-operator.selector" -}}
app.kubernetes.io/name: {{ include "prp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "prp-operator.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "prp-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The kuberay worker's ClusterRole (kuberay-worker-rbac.yaml), which Ephemeral pools bind. */}}
{{- define "prp-operator.kuberayWorkerRole" -}}
{{- printf "%s-kuberay-worker" (include "prp-operator.fullname" .) -}}
{{- end -}}

{{/*
The namespaced permissions: exactly the verbs the operator uses, nothing it only
passes on (tests/operator/cluster/test_chart_rbac.py asserts both).
- pools: kopf lists and watches them and merge-patches its finalizer and annotations;
  the controller merge-patches the status. Owned objects carry blockOwnerDeletion
  (kopf.adopt), which OwnerReferencesPermissionEnforcement allows only to whoever may
  update the pool's finalizers.
- owned kinds (owned.py): watched (kopf indices), server-side applied (a PATCH that
  may create), deleted when the spec no longer wants them.
- secrets: get a pool's API key (and a Secret it names), create the Ray token; never
  list or watch.
- pods: watched by our label for the status; deleted when they hold a Ray token the
  pool's token Secret no longer has (it was deleted and made anew); events: created.
- An Ephemeral pool's kuberay worker: its ServiceAccount, and a RoleBinding to the
  worker's ClusterRole, which the operator may bind (by name) but holds none of:
  RayJobs only listed (the pool's count of flow-run clusters), no pods/log.
*/}}
{{- define "prp-operator.namespacedRules" -}}
- apiGroups: [prefectray.io]
  resources: [prefectraypools]
  verbs: [list, watch, patch]
- apiGroups: [prefectray.io]
  resources: [prefectraypools/status]
  verbs: [patch]
- apiGroups: [prefectray.io]
  resources: [prefectraypools/finalizers]
  verbs: [update]
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  verbs: [bind]
  resourceNames: [{{ include "prp-operator.kuberayWorkerRole" . }}]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [list]
{{- end -}}

{{/* The release and the namespaces it watches ("*": all), on its discovery binding. */}}
{{- define "prp-operator.scopeAnnotations" -}}
prefectray.io/operator-release: {{ printf "%s/%s" .Release.Namespace .Release.Name | quote }}
prefectray.io/watch-namespaces: {{ join "," (default (list "*") .Values.watchNamespaces) | quote }}
{{- end -}}
