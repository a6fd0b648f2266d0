#!/bin/bash
# One GPU session's checks, in one call (device time is scarce: machine start ~30 s, then this).
# Run from the repository root on the GPU machine, with .whl carried (prepare_wheels.sh):
#   CHECKS="tests bench" bash tools/device/gpu_checks.sh
# CHECKS picks, in order: tests (CUDA tests), bench (side-by-side infer rows against upstream;
# BENCH_ONLY="train infer" for the train rows too), replay (CUDA graph replay vs eager, ours
# only), settle (eager vs cuda_graphs `alignn run`s of the reduced mlearn Cu config),
# train_replay (tools/bench/train_cuda_graphs.py on both configs). Outputs land in $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
$PIP --target /tmp/site-common .whl/common/*.whl || exit 3
$PIP --target /tmp/site-ours .whl/ours/*.whl || exit 3
export PYTHONPATH=/tmp/site-ours:/tmp/site-common PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"

run_tests() {
  timeout "${TEST_TIMEOUT:-200}" python3 -m pytest tests/test_cuda.py \
    plugins/alignn-torch/tests/test_cuda_graphs.py -q -p no:cacheprovider \
    -W ignore::DeprecationWarning > "$OUT/test_cuda.log" 2>&1
  echo "tests rc=$?"; tail -5 "$OUT/test_cuda.log"
}

run_bench() {
  $PIP --target /tmp/site-up .whl/up/*.whl || exit 3
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site-up:/tmp/site-common exec python3 "$@"\n' > /tmp/up-python
  chmod +x /tmp/up-python
  local limit=200  # the infer rows take ~75 s; with the train rows ~4 min
  [[ ${BENCH_ONLY:-infer} == *train* ]] && limit=360
  # shellcheck disable=SC2086  # BENCH_ONLY is a list of row groups
  BENCH_VERBOSE=1 timeout "${BENCH_TIMEOUT:-$limit}" python3 tools/bench/run_bench.py --device cuda \
    --upstream-python /tmp/up-python -o "$OUT" --quick --only ${BENCH_ONLY:-infer} \
    2> /tmp/bench_stderr.log | grep -E '^\| |^20'
  echo "bench rc=${PIPESTATUS[0]}"; tail -3 /tmp/bench_stderr.log
}

run_replay() {
  timeout "${REPLAY_TIMEOUT:-150}" python3 tools/bench/cuda_graph_speed.py --out "$OUT" \
    > /tmp/replay.log 2>&1
  echo "replay rc=$?"; tail -12 /tmp/replay.log
}

run_settle() {
  for name in eager-a:false graphs-a:true eager-b:false graphs-b:true eager-c:false graphs-c:true; do
    IFS=: read -r tag graphs <<< "$name"
    python3 - "$graphs" "$tag" <<'PY'
import json, sys
config = json.load(open("examples/mlearn-cu/config_reduced.json"))
config.update({"epochs": 3, "cuda_graphs": sys.argv[1] == "true", "num_workers": 0})
json.dump(config, open(f"/tmp/cfg-{sys.argv[2]}.json", "w"))
PY
    timeout 100 python3 -m alignn_core.cli run "/tmp/cfg-$tag.json" --root-dir examples/mlearn-cu \
      --output-dir "/tmp/run-$tag" --device cuda > "/tmp/run-$tag.log" 2>&1
    echo "run $tag rc=$?"
  done
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
runs = {d.name[4:]: json.loads((d / "history.json").read_text())
        for d in sorted(pathlib.Path("/tmp").glob("run-*")) if (d / "history.json").is_file()}
pathlib.Path(sys.argv[1], "settle_histories.json").write_text(json.dumps(runs, indent=1))
for tag, history in runs.items():
    print(tag, [(e["epoch"], round(e["seconds"], 2), round(e["train"]["loss"], 4),
                 round(e["val"]["loss"], 4)) for e in history])
PY
}

run_train_replay() {
  for c in config_reduced.json config.json; do
    timeout 150 python3 tools/bench/train_cuda_graphs.py --config "$c" --out "$OUT" 2>&1 | tail -3
  done
}

for check in ${CHECKS:-tests bench}; do
  case $check in
    tests) run_tests ;; bench) run_bench ;; replay) run_replay ;; settle) run_settle ;;
    train_replay) run_train_replay ;; *) echo "unknown check $check" ;;
  esac
done
