# Sourced at the start of a command on the H200 machine (Python 3.12, its own torch, no package registry):
# installs fairseq-fixed and its pure-Python needs from the carried .whl/ folder into /tmp/site.
# The first time it builds fairseq-fixed's wheel from the sdist (~2.5 min) and leaves it in $OUT, so later calls can
# carry the built wheel in .whl/ and install in seconds. The wheel (22 MB) is over $OUT's 16 MB per file, so $OUT gets
# it in 15 MB pieces + its sha256: here `cat fairseq_whl.part.* > .whl/fairseq_fixed-0.12.3.1-cp312-cp312-linux_x86_64.whl`
# (check the sha256), then carry .whl without the sdist (the sdist + the wheel + the working tree pass 64 MiB).
unset CUDA_HOME
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ! python3 -c "import fairseq" 2>/dev/null; then
  pre=$(ls .whl/*.whl | grep -v -e fairseq_fixed -e antlr4)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $pre || return 1
  if ! ls .whl/fairseq_fixed-*.whl >/dev/null 2>&1; then
    python3 -m pip wheel -q --no-index --no-deps --no-build-isolation -w "${OUT:-/tmp}" \
      .whl/fairseq_fixed-*.tar.gz .whl/antlr4-python3-runtime-*.tar.gz || return 1
    cp "${OUT:-/tmp}"/fairseq_fixed-*.whl "${OUT:-/tmp}"/antlr4*.whl .whl/
    (cd "${OUT:-/tmp}" && sha256sum fairseq_fixed-*.whl > fairseq_whl.sha256 \
      && split -b 15M fairseq_fixed-*.whl fairseq_whl.part. && rm fairseq_fixed-*.whl)
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/fairseq_fixed-*.whl .whl/antlr4*.whl || return 1
fi
python3 -c "import fairseq, torch; print('fairseq', fairseq.__version__, 'torch', torch.__version__, torch.cuda.device_count(), 'GPUs')"
