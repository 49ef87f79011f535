#!/bin/sh
# Install the torch build `make install` asks for, idempotently; called by the Makefile as
#   scripts/install_torch.sh VENV_BIN TORCH_VERSION [TORCH_INDEX]
# * TORCH_INDEX empty: install torch==TORCH_VERSION from PyPI unless some torch is already there.
# * TORCH_INDEX set (e.g. https://download.pytorch.org/whl/cu124): the build is the index's last
#   path part (cu124, cpu, rocm6.2); an installed torch of another build is replaced (pip alone
#   would keep it: 2.13.0+cpu already satisfies torch==2.13.0), one of this build is kept.
# * Finally, with an NVIDIA GPU (nvidia-smi) and a torch without CUDA, print the command that
#   gives a CUDA build, for the CUDA version the driver supports.
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
        if [ -n "$installed" ]; then
            "$bin/pip" uninstall --quiet --yes torch
        fi
        "$bin/pip" install --quiet --index-url "$index" "torch==$version"
        installed=$("$bin/python" -c "import torch; print(torch.__version__)") ;;
    esac
elif [ -z "$installed" ]; then
    "$bin/pip" install --quiet "torch==$version"
    installed=$("$bin/python" -c "import torch; print(torch.__version__)")
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    cuda=$("$bin/python" -c "import torch; print(torch.version.cuda or '')")
    if [ -z "$cuda" ]; then
        driver=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/cu\1\2/p' | head -n 1)
        echo "note: this machine has an NVIDIA GPU but torch $installed has no CUDA; for a CUDA build run:"
        echo "  make install TORCH_INDEX=https://download.pytorch.org/whl/${driver:-cu124}"
        echo "  (the index must carry torch $version; else add TORCH_VERSION=<a version it has>)"
    fi
fi
