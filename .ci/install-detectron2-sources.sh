#!/usr/bin/env bash
# Put detectron2 0.7's pure-Python sources (with the model-zoo configs) into the venv, from the
# sal-detectron2 wheel on the package index. Its compiled _C targets Python 3.10 and is left out;
# panoptic FPN inference does not need it. Users with network access can use the `detectron2` extra.
set -euo pipefail
PY=${1:-python}
if "$PY" -c "import detectron2.model_zoo" 2>/dev/null; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    --abi none --platform any -d "$tmp" sal-detectron2==0.7.2
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" - "$tmp" "$site" <<'PYEOF'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("detectron2/") and not n.endswith((".so", ".pyd"))]
    z.extractall(sys.argv[2], members=names)
print(f"detectron2 sources: {len(names)} files from {wheel.rsplit('/', 1)[-1]}")
PYEOF
"$PY" -c "import detectron2.model_zoo; print('detectron2', __import__('detectron2').__version__)"
