# Sourced by images/build, images/check, images/rootfs and images/boot: what
# each target is called by Debian, ONNX Runtime and qemu, the cross-compiler
# environment, and the host's Debian packages, mirror and binfmt_misc. Expects TARGET; sets GNU, DEBARCH, ORTARCH (empty: no ONNX
# Runtime for the architecture), QEMU_USER (runner, empty on the host's own
# architecture), QEMU_STATIC, HOST and VERSION.
case "$TARGET" in
  x86_64-unknown-linux-gnu) GNU=x86_64-linux-gnu; DEBARCH=amd64; ORTARCH=x86_64; QEMU_STATIC= ;;
  aarch64-unknown-linux-gnu) GNU=aarch64-linux-gnu; DEBARCH=arm64; ORTARCH=aarch64; QEMU_STATIC=qemu-aarch64-static ;;
  armv7-unknown-linux-gnueabihf) GNU=arm-linux-gnueabihf; DEBARCH=armhf; ORTARCH=; QEMU_STATIC=qemu-arm-static ;;
  *) echo "unsupported target $TARGET" >&2; exit 2 ;;
esac
QEMU_USER=${QEMU_STATIC:+${QEMU_STATIC%-static} -L /usr/$GNU}
HOST=$(rustc -vV | sed -n 's/^host: //p')
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

# apt_need PKG...: installs those of the Debian packages that are missing
# (root, or sudo).
apt_need() {
  local p missing=() sudo=
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "apt-get install ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# binfmt_enable: the target's qemu-user-static entry in binfmt_misc,
# enabled, so a chroot of the target's root runs its binaries (root).
binfmt_enable() {
  local name=${QEMU_STATIC%-static}
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable "$name" >/dev/null 2>&1 || true
  grep -qx enabled "/proc/sys/fs/binfmt_misc/$name" 2>/dev/null ||
    { echo "binfmt_misc has no enabled $name entry: $DEBARCH binaries cannot run in a chroot here" >&2; return 1; }
}

# apt_mirror: the Debian mirror this machine's apt uses (deb822 sources
# first, then sources.list).
apt_mirror() {
  local m
  m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || { echo "no Debian mirror in /etc/apt" >&2; return 1; }
  echo "$m"
}

# The known trap: rdkafka-sys runs librdkafka's own ./configure, which reads
# plain CC/CXX/AR/RANLIB (not CC_<triple>); without them it builds librdkafka
# for the host and the final link fails. Build scripts and host-side C keep
# the host compiler.
cross_env() {
  [ "$TARGET" != "$HOST" ] || return 0
  export CC=$GNU-gcc CXX=$GNU-g++ AR=$GNU-ar RANLIB=$GNU-ranlib
  export HOST_CC=gcc HOST_CXX=g++ HOST_AR=ar HOST_RANLIB=ranlib
  local h=${HOST//-/_} t=${TARGET//-/_}
  export "CC_$h=gcc" "CXX_$h=g++" "AR_$h=ar"
  export "CC_$t=$GNU-gcc" "CXX_$t=$GNU-g++" "AR_$t=$GNU-ar"
  export PKG_CONFIG_ALLOW_CROSS=1
}
