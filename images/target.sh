# Sourced by images/build, images/check and images/rootfs: what each target
# is called by Debian, ONNX Runtime and qemu, and the cross-compiler
# environment. Expects TARGET; sets GNU, DEBARCH, ORTARCH (empty: no ONNX
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
