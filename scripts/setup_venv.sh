#!/usr/bin/env bash
# Create or update .venv in the repository root with everything gs2pose_ros needs:
# torch, gsplat, the ROS 2 Kilted wheels (a real rclpy + Fast DDS), this package's
# interfaces (msg/ -> gs2pose_ros_msgs) and tf2_msgs built with rosidl, and the
# project itself (editable) registered in the ament index.
#
# Idempotent: each step records a hash of its inputs under .venv/.setup/ and is skipped
# when they have not changed, so a second run takes well under a second.
#
# Environment: PYTHON (interpreter to build the venv from, default python3),
#              GS2POSE_TORCH (pip requirement for torch; default: the CPU wheel 2.13.0
#              when no NVIDIA driver is present, the default CUDA build otherwise).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMPS="$VENV/.setup"
PY="$VENV/bin/python"
cd "$ROOT"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# Hash of the contents of the given files and folders (recursively), for the step stamps.
hash_of() { find "$@" -type f -print0 2>/dev/null | sort -z | xargs -0 cat | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark() { echo "$2" > "$STAMPS/$1"; }

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
mkdir -p "$STAMPS"

# 1. torch: the CPU wheel on this kind of machine, a CUDA build where a GPU driver exists.
if [ -z "${GS2POSE_TORCH:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GS2POSE_TORCH="torch"
  else
    GS2POSE_TORCH="torch==2.13.0"
  fi
fi
if ! fresh torch "$GS2POSE_TORCH"; then
  log "installing $GS2POSE_TORCH"
  "$PY" -m pip install --quiet --disable-pip-version-check "$GS2POSE_TORCH"
  mark torch "$GS2POSE_TORCH"
fi

# 2. Python dependencies (ROS wheels included). torch is already satisfied, so nothing here
#    can pull a different build of it.
h=$(hash_of scripts/requirements.txt)
if ! fresh requirements "$h"; then
  log "installing scripts/requirements.txt"
  "$PY" -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  # The wheels' exported CMake files name the Python of the machine they were built on.
  # Point them at this venv (a reinstall of those wheels undoes this, hence done here).
  "$PY" - <<'EOF'
import glob, numpy, os, re, sys, sysconfig
venv = sys.prefix
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
for path in glob.glob(os.path.join(venv, "share", "*", "cmake", "*")):
    if not os.path.isfile(path):
        continue
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    new = re.sub(r"/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/[\w/]*include", np_inc, text)
    new = re.sub(r"/opt/python/cp311-cp311/include/python3\.11", py_inc, new)
    if new != text:
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(new)
EOF
  # ament_index_python needs AMENT_PREFIX_PATH; set it for every process of this venv.
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import os, sys; os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)" > "$site/gs2pose_ament_prefix.pth"
  mark requirements "$h"
  rm -f "$STAMPS/interfaces"  # rebuilt against the (re)installed wheels
fi

# 3. Interfaces: gs2pose_ros_msgs (msg/) and tf2_msgs (not among the wheels), built with
#    rosidl and installed into the venv prefix, where they import with no extra variables.
h=$(hash_of msg scripts/ros_interfaces scripts/setup_venv.sh)
if ! fresh interfaces "$h"; then
  for pkg in msg scripts/ros_interfaces/tf2_msgs; do
    name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$pkg/package.xml" | head -1)
    log "building interfaces $name"
    build="$VENV/.setup/build/$name"
    rm -rf "$build"; mkdir -p "$build"
    AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
      cmake -S "$pkg" -B "$build" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
        -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release >"$build.log" 2>&1 \
      && cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 \
      && cmake --install "$build" >>"$build.log" 2>&1 \
      || { echo "interface build of $name failed; log: $build.log" >&2; tail -30 "$build.log" >&2; exit 1; }
  done
  mark interfaces "$h"
fi

# 4. The project, editable, plus what `pip install -e` leaves out: the ament index marker and
#    the share folder (package.xml, launch/, config/), linked so get_package_share_directory works.
h=$(hash_of setup.py setup.cfg package.xml)
if ! fresh project "$h"; then
  log "installing gs2pose_ros (editable)"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  mark project "$h"
fi
mkdir -p "$VENV/share/ament_index/resource_index/packages" "$VENV/share/gs2pose_ros"
ln -sfn "$ROOT/resource/gs2pose_ros" "$VENV/share/ament_index/resource_index/packages/gs2pose_ros"
for item in package.xml launch config; do
  ln -sfn "$ROOT/$item" "$VENV/share/gs2pose_ros/$item"
done
