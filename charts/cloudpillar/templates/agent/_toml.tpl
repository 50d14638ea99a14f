{{/*
TOML for the agent's configuration. Helm reads every number in values as a float, and its
toToml writes 1048576 as 1.048576e+06, which the agent's u64 fields refuse; this writer puts
each leaf on a dotted-key line and writes whole numbers as integers.
*/}}

{{- define "cloudpillar.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "cloudpillar.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $item := . -}}{{- if $i -}}, {{ end -}}{{- include "cloudpillar.tomlValue" $item -}}{{- end -}}]
{{- else -}}
{{- fail (printf "agent.config: %v (%s) has no TOML form the chart writes" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* (dict "prefix" "" "table" $config): one `dotted.key = value` line per leaf. */}}
{{- define "cloudpillar.toml" -}}
{{- range $key, $value := .table }}
{{- $path := printf "%s%s" $.prefix (include "cloudpillar.tomlKey" $key) }}
{{- if kindIs "map" $value }}
{{- include "cloudpillar.toml" (dict "prefix" (printf "%s." $path) "table" $value) }}
{{- else }}
{{ $path }} = {{ include "cloudpillar.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end -}}
