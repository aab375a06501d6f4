{{/*
The pod of one component. Arguments:
  root       the chart's top context
  component  ingest | aggregator | loader | archiver | batch | query
  command    the hourglass subcommand
  values     the component's values
  port       the port of its health endpoints and /metrics
*/}}
{{- define "hourglass.pod" -}}
{{- $root := .root -}}
{{- $v := .values -}}
metadata:
  labels:
    {{- include "hourglass.selectorLabels" (dict "root" $root "component" .component) | nindent 4 }}
    app.kubernetes.io/part-of: hourglass
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A changed config rolls the pods.
    checksum/config: {{ include "hourglass.configChecksum" $root }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "hourglass.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  # Long enough to drain: in-flight requests and producer for ingest, the open
  # file or batch for the consumers.
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  containers:
    - name: {{ .component }}
      image: {{ include "hourglass.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: [{{ .command | quote }}]
      env:
        {{- include "hourglass.env" $root | nindent 8 }}
        {{- if eq .component "query" }}
        {{- include "hourglass.queryEnv" $root | nindent 8 }}
        {{- end }}
        {{- if and (eq .component "ingest") $root.Values.secrets.ipHashKey.name }}
        - name: HOURGLASS_INGEST__IP_HASH_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.secrets.ipHashKey.name }}
              key: {{ $root.Values.secrets.ipHashKey.key }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ .port }}
          protocol: TCP
      startupProbe:
        httpGet: {path: /health/live, port: http}
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet: {path: /health/live, port: http}
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /health/ready, port: http}
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/hourglass/hourglass.toml
          subPath: hourglass.toml
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if and (eq .component "ingest") $root.Values.secrets.writeKeys.name }}
        - name: write-keys
          mountPath: /etc/hourglass/keys
          readOnly: true
        {{- end }}
        {{- if and (eq .component "query") $root.Values.query.publicKey.secretName }}
        - name: jwt-public-key
          mountPath: /etc/hourglass/jwt
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "hourglass.fullname" $root }}
    # The root filesystem is read-only; scratch space for the libraries that want it.
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- if and (eq .component "ingest") $root.Values.secrets.writeKeys.name }}
    - name: write-keys
      secret:
        secretName: {{ $root.Values.secrets.writeKeys.name }}
        items:
          - key: {{ $root.Values.secrets.writeKeys.key }}
            path: {{ $root.Values.secrets.writeKeys.key }}
    {{- end }}
    {{- if and (eq .component "query") $root.Values.query.publicKey.secretName }}
    - name: jwt-public-key
      secret:
        secretName: {{ $root.Values.query.publicKey.secretName }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
