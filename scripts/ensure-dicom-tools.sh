#!/usr/bin/env bash
# The RTSTRUCT tests check MetTrack's contours with tools a site would use: plastimatch rasterises the
# RTSTRUCT on its series, dicom3tools' dciodvfy checks the objects. Install them from Debian's packages
# when missing.
set -euo pipefail
if command -v plastimatch >/dev/null && command -v dciodvfy >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "plastimatch or dicom3tools is missing: run 'sudo apt-get install -y plastimatch dicom3tools' for the DICOM tests" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends plastimatch dicom3tools
