#!/bin/sh
# Runs every target for $1 seconds (default 300), one after another, one job each.
set -e
cd "$(dirname "$0")"
secs="${1:-300}"
mkdir -p logs
for target in frames dns sni; do
    mkdir -p "corpus/$target"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=512 -timeout=5 -print_final_stats=1 \
        > "logs/$target.log" 2>&1 || echo "$target: exited with $? (see logs/$target.log)"
done
