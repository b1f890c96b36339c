#!/usr/bin/env bash
# One GPU session's checks, in one call (the lent machine bills every second it is held):
#   1. the SD1.5-size UNet bench in bf16, 512x512, 50 Euler steps, CFG: batch 1 (the
#      seconds-per-image target) and batch 16 (the MFU target), each against diffusers'
#      PyTorch UNet on the same card, weights, precision and batch;
#   2. the parity tests (UNet, VAE, CLIP against diffusers / transformers) with JAX on GPU.
# Usage, from the repository root on the GPU machine:  OUT=runs/gpu bash tools/gpu_check.sh
# Pure-python wheels missing there (flax, ml_collections, diffusers, importlib_metadata)
# can be carried in .whl/ and are installed into /tmp/site first.
set -u
OUT=${OUT:-runs/gpu}
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

bench() {  # name, timeout, config overrides
  timeout "$2" python3 -m diffjax.cli bench --config "configs/bench/sd15.py:$3" \
    --out "/tmp/bench-$1" > "$OUT/bench-$1.log" 2>&1
  echo "bench $1: exit $?"; tail -n 8 "$OUT/bench-$1.log"
  cp "/tmp/bench-$1/results.json" "$OUT/bench-$1.json" 2>/dev/null
}
bench b1 240 "dtype=bfloat16,steps=50,repeats=5,batch=1"
bench b16 200 "dtype=bfloat16,steps=50,repeats=3,batch=16"

JAX_PLATFORMS=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider -n 4 \
  tests/test_unet_vae.py tests/test_clip.py tests/test_convert.py -k "not shard" \
  > "$OUT/parity.log" 2>&1
echo "parity tests: exit $?"; tail -n 15 "$OUT/parity.log"
