#!/bin/sh
# Install the torch build `make install` asks for, idempotently; called by the Makefile as
#   scripts/install_torch.sh VENV_BIN TORCH_VERSION [TORCH_INDEX]
# * TORCH_INDEX empty: install torch==TORCH_VERSION from PyPI unless some torch is already there.
# * TORCH_INDEX set (e.g. https://download.pytorch.org/whl/cu128): the build is the index's last
#   path part (cu128, cpu, rocm6.2); an installed torch of another build is replaced (pip alone
#   would keep it: 2.13.0+cpu already satisfies torch==2.13.0), one of this build is kept. The
#   replacement is one pip step (--force-reinstall): nothing is uninstalled first, so an index that
#   lacks torch==TORCH_VERSION fails with the old torch still in place. Its dependencies follow.
# * Finally, with an NVIDIA GPU (nvidia-smi) and a torch without CUDA, print the command that
#   gives a CUDA build: the newest index of KNOWN_INDICES at or below the driver's CUDA version
#   (indices are not derived from the version: most cuXYZ names do not exist).
set -eu
bin=$1
version=$2
index=${3:-}
installed=$("$bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null || true)
if [ -n "$index" ]; then
    build=$(basename "${index%/}")
    case "$installed" in
    *"+$build")
        echo "torch $installed ($build) is installed" ;;
    *)
        "$bin/pip" install --quiet --force-reinstall --no-deps --index-url "$index" "torch==$version"
        # torch's own dependencies (from the same index, which mirrors them, else from PyPI).
        "$bin/pip" install --quiet --extra-index-url "$index" "torch==$version"
        installed=$("$bin/python" -c "import torch; print(torch.__version__)") ;;
    esac
elif [ -z "$installed" ]; then
    "$bin/pip" install --quiet "torch==$version"
    installed=$("$bin/python" -c "import torch; print(torch.__version__)")
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    cuda=$("$bin/python" -c "import torch; print(torch.version.cuda or '')")
    if [ -z "$cuda" ]; then
        # The driver's CUDA version as a number (12.8 -> 1208), 0 when nvidia-smi does not say.
        driver=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)
        driver=$(echo "${driver:-0 0}" | awk '{print $1 * 100 + $2}')
        # PyTorch wheel indices (newest first) that carry recent torch releases.
        suggested=cu128
        for known in cu128:1208 cu126:1206 cu124:1204 cu121:1201 cu118:1108; do
            if [ "$driver" -ge "${known#*:}" ]; then suggested=${known%%:*}; break; fi
        done
        echo "note: this machine has an NVIDIA GPU but torch $installed has no CUDA; for a CUDA build run:"
        echo "  make install TORCH_INDEX=https://download.pytorch.org/whl/$suggested"
        echo "  (check https://download.pytorch.org/whl/ for the index matching your driver; it must carry"
        echo "  torch $version, else add TORCH_VERSION=<a version it has>)"
    fi
fi
