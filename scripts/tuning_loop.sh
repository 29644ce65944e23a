#!/usr/bin/env bash
# The README's loop, production → feedback → data → tune → evaluate → canary → promote, at a
# reduced size, with the README's commands (`make tuning-loop`, about 5 min on 2 cores). It uses
# the default ports (HTTP 8000, metrics 8080, Prometheus 9090) and writes under .cache/tuning-loop.
set -euo pipefail
REPO=$(pwd); W=${LOOP_DIR:-$REPO/.cache/tuning-loop}; rm -rf "$W"; mkdir -p "$W/loras"
SD="$REPO/.venv/bin/sd-serving"
export SD_CACHE_DIR=$W/cache SD_RAY_TEMP_DIR=${SD_RAY_TEMP_DIR:-/tmp/sd-loop}
stop() { kill -INT -- -"$1" 2>/dev/null || true; for _ in $(seq 60); do kill -0 "$1" 2>/dev/null || return 0; sleep 1; done; }
ready() { for _ in $(seq 240); do curl -sf localhost:8000/v2/health/ready >/dev/null && return 0; sleep 1; done; return 1; }
echo "== 1. production: the demo model serves; clients rate images"
setsid make serve > "$W/serve1.log" 2>&1 & S1=$!; ready
i=0
for prompt in "a red circle on a white background" "a blue square on a black background" \
  "a green triangle on a white background" "a yellow square on a black background" \
  "a red triangle on a black background" "a blue circle on a white background"; do
  for seed in 1 2; do
    i=$((i+1))
    line=$($SD generate "$prompt" --seed $seed -o "$W/img$i.png" --no-progress)
    digest=${line##* image }
    if [ $i -eq 3 ]; then $SD feedback "$digest" --rating 1 --caption "a green circle on a white background"
    elif [ $i -eq 4 ]; then $SD feedback "$digest" --rating 2
    else $SD feedback "$digest" --rating 5; fi
  done
done
echo "== 2. data"
$SD export-feedback "$W/data/feedback"
stop $S1
echo "== 3. tune on it beside the original, registered; 4. evaluate"
$SD world "$W/data/original" --count 48
$SD tune "$W/out/v2" --original "$W/data/original" --new "$W/data/feedback" --register demo \
  --steps 40 --eval-seeds 1 --eval-steps 10 --validation-fraction 0.25
sed -n '/Adherence per source/,/^## Per class/p' "$W/out/v2/report.md"
echo "== 5. canary"
cp -r "$W/out/v2/stratified" "$W/loras/demo-v2"
prometheus --config.file="$REPO/loadtest/prometheus.yml" --web.listen-address=127.0.0.1:9090 \
  --storage.tsdb.path="$W/prom" > "$W/prom.log" 2>&1 & P=$!
SD_LORA_DIR=$W/loras SD_ROLLOUT='{"versions": {"1": {}, "2": {"adapter": "demo-v2"}}, "champion": "1",
  "challenger": "2", "canary_percent": 50}' setsid make serve > "$W/serve2.log" 2>&1 & S2=$!; ready
for n in $(seq 60); do
  curl -s localhost:8000/v1/generate -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"a red circle on a white background\", \"steps\": 8}" | python3 -c "import json,sys; print(json.load(sys.stdin)['model_version'], end=' ')"
done; echo
sleep 30
echo "== 6. promote"
set +e
$SD promote demo --prometheus-url http://127.0.0.1:9090 --served-model sd-embedded --window 10m
status=$?; echo "promote exit status $status (0 promoted, 1 refused)"
stop $S2; kill $P
