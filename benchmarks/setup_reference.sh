#!/usr/bin/env bash
# Builds .venv-bench/, the environment of the PyTorch reference (torchcfm)
# that benchmarks/cfm_bench.py measures beside this repository's JAX code.
#
#     bash benchmarks/setup_reference.sh [VENV_DIR]
#
# torch is pinned to the CPU wheel by its local label (2.13.0+cpu, a file
# pip finds through its find-links on this machine): plain `torch` would pull
# a multi-GB CUDA build, and where no +cpu wheel is on offer the pin fails at
# once instead. The torch code torchcfm imports is installed with --no-deps,
# so that nothing can drag in another torch (torchdyn alone asks for
# torchvision, lightning and Jupyter).
set -euo pipefail

VENV="${1:-.venv-bench}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), (
    f"the reference env needs Python 3.11 (the CPU torch wheel is cp311); "
    f"got {sys.version.split()[0]}; set PYTHON=python3.11")'

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)

# The CPU build of torch with its own (small) dependencies.
"${PIP[@]}" 'torch==2.13.0+cpu'

# The numerical stack, resolved by pip with its own dependencies: none of
# these depends on torch.
"${PIP[@]}" 'numpy==2.4.6' 'scipy==1.17.1' 'scikit-learn==1.9.1' \
  'matplotlib==3.11.2' 'pot==0.9.7.post1' 'absl-py==2.5.1'

# torchcfm and the torch code it imports (training, OT, sampling), without
# their declared dependencies: torchdyn imports torchcde and
# pytorch_lightning at import time, but needs neither torchvision nor
# Jupyter.
"${PIP[@]}" --no-deps 'torchcfm==1.0.7' 'torchdyn==1.0.6' \
  'torchdiffeq==0.2.5' 'torchsde==0.2.6' 'trampoline==0.1.2' \
  'torchcde==0.2.5' 'attrs==26.1.0' 'pytorch-lightning==2.6.6' \
  'torchmetrics==1.9.0' 'lightning-utilities==0.15.3' 'tqdm==4.70.1' \
  'pyyaml==6.0.4'

# A torch other than the CPU wheel means a dependency slipped through.
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith('2.13.0') and '+cpu' in torch.__version__, (
    f'unexpected torch {torch.__version__}')
import ot, torchcfm, torchdyn.core  # noqa: F401
from torchcfm.models.models import MLP  # noqa: F401
print(f'reference env ready: torch {torch.__version__}, '
      f'pot {ot.__version__}')
PY

# Marks a complete install; `make bench` rebuilds the env when it is absent.
touch "$VENV/.installed"
