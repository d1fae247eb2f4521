#!/usr/bin/env bash
# Install Debian's dataset-fashion-mnist package, which puts the four Fashion-MNIST IDX files
# in /usr/share/datasets/fashion-mnist, where autoexp finds them without any setting.
set -euo pipefail
folder=/usr/share/datasets/fashion-mnist

if [ -f "$folder/train-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST found in $folder"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "Fashion-MNIST not installed. As root on Debian or Ubuntu run" \
        "'apt-get install dataset-fashion-mnist'; elsewhere put the four IDX files in a folder" \
        "and pass data.root=FOLDER, or pass data.download=true." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }
echo "Fashion-MNIST installed in $folder"
