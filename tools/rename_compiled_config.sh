#!/usr/bin/env bash
# One-off rename (issue 9): "runtime" meant four things. Compiled listener config is now
# named as Envoy names it. Kept so branches written before the rename can be brought along.
set -euo pipefail
files=$(grep -rl --include=*.rs -e ListenerRuntime -e HcmRuntime -e ChainRuntime -e TcpProxyRuntime -e xds_runtime src tests benches interop-tests 2>/dev/null || true)
for f in $files; do
    sed -i -e 's/\bListenerRuntime\b/ListenerImpl/g' -e 's/\bHcmRuntime\b/HcmConfig/g' \
        -e 's/\bChainRuntime\b/FilterChainImpl/g' -e 's/\bTcpProxyRuntime\b/TcpProxyConfig/g' \
        -e 's/\bxds_runtime\b/xds_start/g' "$f"
done
if [[ -f src/xds_runtime.rs ]]; then git mv src/xds_runtime.rs src/xds_start.rs; fi
