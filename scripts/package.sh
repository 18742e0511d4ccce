#!/usr/bin/env bash
# Build the sluice .deb: binary, systemd unit, default config, OCI hook
# config, man pages and shell completions.
#
#   scripts/package.sh [OUTDIR]        (default dist/)
#
# It packages with nfpm (a pinned Go module, run through `go run`); if nfpm
# cannot be built (no module proxy), it falls back to dpkg-deb on the same
# staged tree. PACKAGER=nfpm|dpkg-deb forces one.
set -euo pipefail
cd "$(dirname "$0")/.."

NFPM_VERSION=v2.45.2
OUT=${1:-dist}
GO=${GO:-go}
ARCH=${ARCH:-$($GO env GOARCH)}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# Debian versions must start with a digit: a tag v1.2.3 gives 1.2.3,
# anything else 0.0.0~gitDATE.SHA.
if tag=$(git describe --tags --exact-match 2>/dev/null) && [[ $tag =~ ^v[0-9] ]]; then
	VERSION=${tag#v}
else
	VERSION="0.0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
export VERSION ARCH

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/sluice-stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
export STAGE

echo "staging sluice $VERSION ($ARCH) in $STAGE"
mkdir -p "$STAGE"/usr/bin "$STAGE"/lib/systemd/system "$STAGE"/etc/sluice/policies \
	"$STAGE"/usr/share/man/man1 "$STAGE"/usr/share/bash-completion/completions \
	"$STAGE"/usr/share/zsh/vendor-completions "$STAGE"/usr/share/fish/vendor_completions.d \
	"$STAGE"/usr/share/containers/oci/hooks.d "$STAGE"/usr/share/doc/sluice "$STAGE"/DEBIAN-scripts \
	"$STAGE"/var/lib/sluice "$STAGE"/var/log/sluice

CGO_ENABLED=0 GOARCH=$ARCH $GO build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$STAGE/usr/bin/sluice" ./cmd/sluice
# Man pages and completions come from the binary itself (same arch only).
BIN="$STAGE/usr/bin/sluice"
if [ "$ARCH" != "$($GO env GOHOSTARCH)" ]; then
	BIN=$(mktemp "${TMPDIR:-/tmp}/sluice-host.XXXXXX")
	$GO build -o "$BIN" ./cmd/sluice
fi
"$BIN" man --dir "$STAGE/usr/share/man/man1" >/dev/null
gzip -9n "$STAGE"/usr/share/man/man1/*.1
"$BIN" completion bash >"$STAGE/usr/share/bash-completion/completions/sluice"
"$BIN" completion zsh >"$STAGE/usr/share/zsh/vendor-completions/_sluice"
"$BIN" completion fish >"$STAGE/usr/share/fish/vendor_completions.d/sluice.fish"

install -m 0644 scripts/deploy/systemd/sluice.service "$STAGE/lib/systemd/system/sluice.service"
install -m 0600 scripts/deploy/config.yaml "$STAGE/etc/sluice/config.yaml"
install -m 0644 scripts/deploy/oci/sluice-hook.json "$STAGE/usr/share/containers/oci/hooks.d/sluice.json"
install -m 0644 README.md "$STAGE/usr/share/doc/sluice/README.md"
[ -f LICENSE ] && install -m 0644 LICENSE "$STAGE/usr/share/doc/sluice/copyright"
install -m 0755 scripts/deploy/debian/postinst scripts/deploy/debian/prerm scripts/deploy/debian/postrm "$STAGE/DEBIAN-scripts/"

mkdir -p "$OUT"
DEB="$OUT/sluice_${VERSION}_${ARCH}.deb"
rm -f "$DEB"

# nfpm is built once per version into a cache directory.
NFPM_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/nfpm-$NFPM_VERSION
NFPM=$NFPM_DIR/nfpm
packager=${PACKAGER:-}
if [ -z "$packager" ] || [ "$packager" = nfpm ]; then
	if [ -x "$NFPM" ] || GOBIN=$NFPM_DIR $GO install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" >/dev/null 2>&1; then
		packager=nfpm
	elif [ "$packager" = nfpm ]; then
		echo "nfpm $NFPM_VERSION could not be built" >&2
		exit 1
	else
		echo "nfpm $NFPM_VERSION is not available; falling back to dpkg-deb" >&2
		packager=dpkg-deb
	fi
fi

case $packager in
nfpm)
	repo=$PWD
	case $DEB in /*) target=$DEB ;; *) target=$repo/$DEB ;; esac
	(cd "$STAGE" && "$NFPM" package --config "$repo/scripts/deploy/nfpm.yaml" --packager deb --target "$target")
	;;
dpkg-deb)
	root="$STAGE/root"
	mkdir -p "$root/DEBIAN"
	(cd "$STAGE" && tar --exclude=./root --exclude=./DEBIAN-scripts -cf - .) | (cd "$root" && tar -xf -)
	cp "$STAGE"/DEBIAN-scripts/* "$root/DEBIAN/"
	echo /etc/sluice/config.yaml >"$root/DEBIAN/conffiles"
	cat >"$root/DEBIAN/control" <<CONTROL
Package: sluice
Version: $VERSION
Architecture: $ARCH
Section: net
Priority: optional
Maintainer: sluice maintainers <maintainers@sluice.invalid>
Depends: libc6
Recommends: iproute2
Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://github.com/sluice-dev/sluice
Description: Egress enforcement and credential injection for sandboxed processes
 eBPF cgroup hooks redirect a sandbox's connections and DNS to a
 per-sandbox transparent proxy and resolver that apply its policy.
CONTROL
	chmod 0700 "$root/var/lib/sluice" "$root/var/log/sluice"
	dpkg-deb --root-owner-group -Zxz --build "$root" "$DEB" >/dev/null
	;;
*)
	echo "unknown PACKAGER=$packager (nfpm or dpkg-deb)" >&2
	exit 2
	;;
esac
echo "built $DEB ($packager)"
dpkg-deb --info "$DEB" | sed -n '/Package:/,/Description:/p'
