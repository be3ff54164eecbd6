#!/usr/bin/env bash
# Installs Debian's ffmpeg for the tests that make rotated / re-encoded videos at test time.
# Without root or apt those tests skip with a reason; nothing else depends on this.
set -u
if command -v ffmpeg >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_ffmpeg: not root or no apt-get; ffmpeg tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) \
  || echo "install_ffmpeg: apt-get failed; ffmpeg tests will be skipped" >&2
exit 0
