#!/usr/bin/env bash
# Create .venv and install mm15 with everything its tests need, from this repo's own files.
#   TORCH_SPEC  the torch requirement to install first (default: the CPU-friendly pin below;
#               on a GPU machine e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index configured;
#               the lock pins torch 2.13.0 by version only, so any build of it satisfies it)
#   PYTHON      the interpreter that creates the venv (default: python3)
# --with-vllm   also make .venv-vllm (scripts/setup-vllm.sh: vLLM and the mm15 plugin, ~4 GB)
#               for the vLLM test tier; where it cannot be installed, say so and go on (those
#               tests then skip, saying why).  The README's test command passes it.
set -euo pipefail
cd "$(dirname "$0")/.."
with_vllm=0
for arg in "$@"; do
  case "$arg" in
    --with-vllm) with_vllm=1 ;;
    *) echo "setup: unknown argument $arg (known: --with-vllm)" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# torch first and pinned: an unpinned torch pulls the newest build with GBs of CUDA packages.
# Every distribution at the version measured (scripts/lock.txt, written by scripts/lock.sh).
LOCK=(-c scripts/lock.txt)
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${LOCK[@]}" \
  "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${LOCK[@]}" -e ".[test]"
# The lmms-eval harness for the mm15 plugin (docs/evaluation.md), without the dependencies it
# declares: resolving them downgrades av and installs a CUDA torchvision that breaks transformers.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${LOCK[@]}" --no-deps \
  -r scripts/lmms-requirements.txt
# Reference implementations for the parity tests (timm, open_clip and the torchvision they
# import), kept out of site-packages; scripts/reference-requirements.txt says why.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
  --target .venv/references -r scripts/reference-requirements.txt
problems=$(.venv/bin/python -m pip check | grep -v '^lmms-eval ' || true)
if [ -n "$problems" ]; then
  echo "setup: unmet requirements (lmms-eval's own are expected):" >&2
  echo "$problems" >&2
  exit 1
fi
# The web page test drives Debian's headless Chromium (tests/test_serve_browser.py); it skips,
# saying why, where neither the browser can be found nor installed (needs root and apt).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium chromium-driver >/dev/null) \
      || echo "setup: could not install chromium; the browser test will skip" >&2
  else
    echo "setup: chromium/chromedriver not found (install Debian's chromium chromium-driver);" \
      "the browser test will skip" >&2
  fi
fi
if [ "$with_vllm" = 1 ]; then
  bash scripts/setup-vllm.sh \
    || echo "setup: vLLM could not be installed (see above); tests/test_vllm_plugin.py will skip" >&2
fi
