#!/usr/bin/env bash
# bench_gan_study.py's study and controls for one real size on another machine (a lent GPU, say),
# from a bundle made here: FER2013's six classes, the split manifests and the trained generators.
# The generated faces are remade there by the same commands (synth edit, synth faces), and checked
# against a sample of the faces made here.
#
#   bash benchmarks/gan_study_remote.sh pack BUNDLE        # here, after the split and gan steps
#   bash benchmarks/gan_study_remote.sh run BUNDLE OUT     # there, from the repository root
#
# run writes OUT/results.tar.gz (every study's tables, runs.csv, logs and run summaries; no weights)
# and OUT/run.log. Environment: SIZE (200), EPOCHS (25), SEEDS (3), RATIOS (0,1,2,5), CONTROL_KS
# (1,5), JOBS (8), LIMIT (seconds for the bench, after which whatever finished is packed; 0: no
# limit), PYTHON (python3), WORK, FER2013_DIR.
set -euo pipefail
mode=${1:?usage: gan_study_remote.sh pack BUNDLE | run BUNDLE OUT}
bundle=${2:?give the bundle folder}
size=${SIZE:-200}
work=${WORK:-$HOME/ferkit-bench/gan-study}
data=${FER2013_DIR:-$HOME/.cache/ferkit/fer2013}
here=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$bundle" && bundle=$(cd "$bundle" && pwd)   # absolute: the steps below change folder

case $mode in
pack)
  # FER2013 without neutral (the study's six classes), gzipped: tar's headers are most of its size
  tar -C "$data" --exclude neutral -czf "$bundle/fer2013-6.tar.gz" train validation
  (cd "$work" && tar -czf "$bundle/inputs.tar.gz" val.csv trainpool.csv gan_pool.csv real50.csv real200.csv \
      gan-self-"$size"/config.json gan-self-"$size"/generator.safetensors gan-pool/config.json \
      gan-pool/generator.safetensors)
  # a sample of the faces made here (the first 300 of each generator's metadata), to compare with
  (cd "$work/faces" && for f in gan_self_"$size" gan_pool_"$size" procedural; do
     sed -n '2,301p' "$f/metadata.csv" | cut -d, -f1 | sed "s#^#$f/#"; done > "$bundle/sample.txt"
   tar -czf "$bundle/sample.tar.gz" -T "$bundle/sample.txt")
  echo "$data" > "$bundle/data_prefix.txt"
  du -ch "$bundle"/* | tail -1
  ;;
run)
  out=${3:?give the output folder}
  py=${PYTHON:-python3}
  mkdir -p "$out" "$work" "$data" && out=$(cd "$out" && pwd)
  exec > >(tee -a "$out/run.log") 2>&1
  echo "start $(date -u +%FT%TZ) on $(hostname); $($py -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
  [ -d "$data/train" ] || tar -C "$data" -xzf "$bundle/fer2013-6.tar.gz"
  if [ ! -f "$work/val.csv" ]; then
    tar -C "$work" -xzf "$bundle/inputs.tar.gz"
    from=$(cat "$bundle/data_prefix.txt")
    [ "$from" = "$data" ] || sed -i "s#^$from/#$data/#" "$work"/*.csv
  fi
  mkdir -p "$work/sample-here" && tar -C "$work/sample-here" -xzf "$bundle/sample.tar.gz"
  export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  bench=("$py" "$here/benchmarks/bench_gan_study.py" --work "$work" --sizes "$size"
         --epochs "${EPOCHS:-25}" --seeds "${SEEDS:-3}" --ratios "${RATIOS:-0,1,2,5}"
         --control-ks "${CONTROL_KS:-1,5}" --jobs "${JOBS:-8}")
  t0=$(date +%s)
  rc=0
  if [ "${LIMIT:-0}" -gt 0 ]; then
    timeout --signal=INT --kill-after=20 "$LIMIT" "${bench[@]}" --steps edit,study,control,compare || rc=$?
  else
    "${bench[@]}" --steps edit,study,control,compare || rc=$?
  fi
  echo "bench exit $rc after $(( $(date +%s) - t0 )) s"
  # the faces made there against the sample made here
  "$py" - "$work/faces" "$work/sample-here" <<'EOF' || true
import sys
from pathlib import Path
import numpy as np
from PIL import Image
there, here = Path(sys.argv[1]), Path(sys.argv[2])
for d in sorted(p for p in here.iterdir() if p.is_dir()):
    diffs, same = [], 0
    files = sorted(d.rglob("*.png"))
    for f in files:
        a = np.asarray(Image.open(f), dtype=np.int16)
        if not (there / f.relative_to(here)).exists():
            break
        b = np.asarray(Image.open(there / f.relative_to(here)), dtype=np.int16)
        diffs.append(np.abs(a - b).mean())
        same += int((a == b).all())
    if not diffs:
        print(f"faces {d.name}: not made there")
        continue
    print(f"faces {d.name}: {len(diffs)} compared, {same} identical, mean |difference| "
          f"{np.mean(diffs):.3f} grey levels (max per face {np.max(diffs):.3f})")
EOF
  (cd "$work" && tar -czf "$out/results.tar.gz" --exclude '*.safetensors' --exclude manifests --exclude predictions.csv \
      $(ls -d study-"$size" study-"$size"-steps* faces/*/metadata.csv 2>/dev/null)) || echo "packing failed"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
  echo "end $(date -u +%FT%TZ); results in $out/results.tar.gz"
  exit $rc
  ;;
*)
  echo "unknown mode $mode (pack or run)" >&2; exit 2 ;;
esac
