#!/usr/bin/env bash
# The PACS tests run a real Orthanc (with its DICOMweb plugin) and dcmtk's storescu/echoscu as the
# sending modality. Install them from Debian's packages when missing. The Orthanc service the package
# sets up is not used: the tests start their own Orthanc on private ports with a config they write.
set -euo pipefail
if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
  && command -v storescu >/dev/null && command -v echoscu >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Orthanc or dcmtk is missing: run 'sudo apt-get install -y orthanc orthanc-dicomweb dcmtk' for the PACS tests" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb dcmtk
