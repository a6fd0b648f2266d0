#!/bin/bash
# Wheels for a GPU machine that has Python 3.12 and a CUDA torch but no network: our packages
# built from this checkout, plus the pure-Python/manylinux dependencies ours and upstream ALIGNN
# need on top of torch. Run here (registry access), then carry .whl to the device:
#   bash tools/device/prepare_wheels.sh && git check-ignore -q .whl
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python}
DOWNLOAD=("$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp
  --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
rm -rf .whl/ours .whl/common .whl/up
mkdir -p .whl/ours .whl/common .whl/up
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl/ours \
  . plugins/alignn-torch plugins/alignn-lmdb plugins/alignn-torchscript
"${DOWNLOAD[@]}" -d .whl/common pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 \
  typing_extensions==4.16.0 typing_inspection==0.4.5 ase==3.29.0 lmdb==3.0.0
"${DOWNLOAD[@]}" -d .whl/up alignn==2026.8.11 jarvis_tools==2026.6.12 pydantic_settings==2.16.3 \
  python_dotenv==1.2.4 spglib==2.8.0 xmltodict==1.0.4
ls .whl/*
