# Sourced by scripts/run and scripts/test: makes sure libtorch (torch 2.11.0 from PyPI, the
# version tch 0.24 is built for) is installed, and puts its lib folder on the library path.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.11.0"
have_torch() {
    "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null
}
if ! have_torch; then
    echo "installing torch==$TORCH_VERSION from PyPI (once, about a minute)..." >&2
    "$PYTHON" -m pip install --quiet "torch==$TORCH_VERSION" >&2
fi
TORCH_LIB="$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LIBTORCH_USE_PYTORCH=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
