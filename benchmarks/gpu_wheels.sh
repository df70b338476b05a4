#!/usr/bin/env bash
# Download into .whl/ the wheels that a GPU machine without network lacks, for its Python 3.12 on x86-64 (copy .whl/
# along; benchmarks/gpu_run.sh's header says how to install them there). It assumes that machine already has torch,
# torchvision, accelerate, huggingface-hub, safetensors, numpy, scipy, pillow, pyyaml, scikit-learn, matplotlib, tqdm,
# pytest and hypothesis, but not diffusers and torch-fidelity; timm is carried in the version the tests run with.
# The wheels' own needs (diffusers: huggingface-hub>=1.32, safetensors>=0.8, regex, requests, filelock; torch-fidelity:
# torch, torchvision, numpy, pillow, tqdm, scipy; timm: torch, torchvision, pyyaml, huggingface_hub, safetensors) are
# in that list, so they are downloaded with --no-deps. Usage: bash benchmarks/gpu_wheels.sh (from any folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(diffusers==0.42.1 torch-fidelity==0.4.0 timm==1.0.31)
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PACKAGES[@]}"
for w in .whl/*.whl; do
    echo "$w: $(du -k "$w" | cut -f1) KiB; needs: $(unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v extra \
        | sed 's/Requires-Dist: //' | tr '\n' ' ')"
done
echo "total $(du -sh .whl | cut -f1) in .whl/ (copy it to the GPU machine: .whl is ignored by git)"
