#!/usr/bin/env bash
# One GPU session's checks, in one call (the lent machine bills every second it is held):
#   0. the tiny pipeline's sample program compiles on the GPU (seconds; stops early if not);
#   1. the SD1.5-size UNet bench in bf16, 512x512, 50 Euler steps, CFG: batch 1 (the
#      seconds-per-image target, against diffusers' PyTorch UNet on the same card, weights,
#      precision and batch) and batch 16 (the MFU target) in what time is left;
#   2. unless SDXL=0, the SDXL base bench (diffjax/configs/bench/sdxl.py): 1024x1024, 20
#      Euler steps, CFG, bf16, batch 1 then 4 and 8 in what time is left, against diffusers,
#      with XLA's planned device memory per program (unet/sample_planned_bytes);
#   3. unless PARITY=0, the parity tests (UNet, VAE, CLIP against diffusers / transformers,
#      the SDXL pipeline against StableDiffusionXLPipeline) with JAX on the GPU.
# Usage, from the repository root on the GPU machine:
#   OUT=runs/gpu BUDGET_S=320 PARITY=1 SDXL=1 bash tools/gpu_check.sh
# Pure-python wheels missing there (flax, ml_collections, diffusers, importlib_metadata)
# can be carried in .whl/ and are installed into /tmp/site first.
set -u
OUT=${OUT:-runs/gpu}; BUDGET_S=${BUDGET_S:-540}; PARITY=${PARITY:-1}; SDXL=${SDXL:-1}
START=$(date +%s); left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch shares the card in --vs diffusers
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, flax, torch, diffusers, transformers as t; print('jax', jax.__version__,
'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', t.__version__); print(jax.devices())"; } 2>&1 | tee "$OUT/env.txt"

timeout 60 python3 -c "
import jax
from diffjax.weights.load import load
from diffjax.pipeline import SampleSpec, TextToImage
c = load('tiny', 'bfloat16', 'auto')
p = TextToImage(c, SampleSpec(sampler='euler', steps=4, batch_size=1, dtype='bfloat16',
                mesh_shape=(1, 1, 1)), devices=jax.devices()[:1])
print('tiny sample program compiled in', round(p.compile_seconds(), 2), 's;',
      'image', p(['a red circle'], [0]).shape)" > "$OUT/precheck.log" 2>&1 \
  || { echo "precheck failed:"; tail -n 3 "$OUT/precheck.log"; exit 1; }
tail -n 1 "$OUT/precheck.log"

bench() {  # name, timeout, config overrides [, config module (default sd15)]
  timeout "$2" python3 -m diffjax.cli bench --config "diffjax.configs.bench.${4:-sd15}:$3" \
    --out "/tmp/bench-$1" > "$OUT/bench-$1.log" 2>&1
  local rc=$?
  echo "bench $1: exit $rc, $(left) s left"; tail -n 6 "$OUT/bench-$1.log"
  cp "/tmp/bench-$1/results.json" "$OUT/bench-$1.json" 2>/dev/null
  return $rc
}
bench b1 $(( $(left) - 20 )) "dtype=bfloat16,steps=50,repeats=5,batch=1"
[ "$(left)" -gt 60 ] && bench b16 $(( $(left) - 5 - (SDXL ? BUDGET_S / 3 : 0) )) \
  "dtype=bfloat16,steps=50,repeats=3,batch=16,vs="
if [ "$SDXL" = 1 ] && [ "$(left)" -gt 90 ]; then
  bench sdxl-b1 $(( $(left) * 2 / 3 )) "batch=1,repeats=3" sdxl
  [ "$(left)" -gt 90 ] && bench sdxl-b4 $(( $(left) / 2 )) "batch=4,repeats=2,vs=" sdxl
  [ "$(left)" -gt 90 ] && bench sdxl-b8 $(( $(left) - 30 )) "batch=8,repeats=2,vs=" sdxl
fi

if [ "$PARITY" = 1 ] && [ "$(left)" -gt 60 ]; then
  JAX_PLATFORMS=cuda timeout $(( $(left) - 5 )) python3 -m pytest -q -p no:cacheprovider -n 4 \
    tests/test_unet_vae.py tests/test_clip.py tests/test_convert.py tests/test_sdxl_pipeline.py \
    -k "not shard" \
    > "$OUT/parity.log" 2>&1
  echo "parity tests: exit $?"; tail -n 3 "$OUT/parity.log"
fi
