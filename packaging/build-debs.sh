#!/usr/bin/env bash
# Builds the Debian packages assist-jumphost, assist-client and support-cli from binaries
# already built: packaging/build-debs.sh BIN_DIR OUT_DIR (BIN_DIR: target/release for
# shipping). Needs dpkg-dev (dpkg-shlibdeps) and help2man, as scripts/test.sh installs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)-1
arch=$(dpkg --print-architecture)
maintainer="Assist developers <assist-dev@example.org>"
date=$(date -R -d "@$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# package name, one-line summary, long description (one paragraph)
build() {
  local pkg=$1 summary=$2 description=$3
  local dir=$work/$pkg
  install -d -m 0755 "$dir/DEBIAN" "$dir/usr/bin" "$dir/usr/share/man/man1" "$dir/usr/share/doc/$pkg"
  install -m 0755 "$bin_dir/$pkg" "$dir/usr/bin/$pkg"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$dir/usr/bin/$pkg"
  help2man --no-info --version-string="$version" --name="$summary" "$dir/usr/bin/$pkg" \
    | gzip -9n > "$dir/usr/share/man/man1/$pkg.1.gz"
  chmod 0644 "$dir/usr/share/man/man1/$pkg.1.gz"
  install -m 0644 "$root/packaging/copyright" "$dir/usr/share/doc/$pkg/copyright"
  printf '%s (%s) unstable; urgency=medium\n\n  * Built from the project repository.\n\n -- %s  %s\n' \
    "$pkg" "$version" "$maintainer" "$date" | gzip -9n > "$dir/usr/share/doc/$pkg/changelog.Debian.gz"
  chmod 0644 "$dir/usr/share/doc/$pkg/changelog.Debian.gz"
  case $pkg in
    assist-jumphost)
      install -D -m 0644 "$root/README.md" "$dir/usr/share/doc/$pkg/README.md"
      install -D -m 0644 "$root/packaging/jumphost.toml" "$dir/etc/assist-jumphost/jumphost.toml"
      install -D -m 0644 "$root/packaging/policy.toml" "$dir/etc/assist-jumphost/policies/00-policy.toml"
      install -d -m 0755 "$dir/usr/share/doc/$pkg/examples/policies"
      install -m 0644 "$root"/policies/*.toml "$dir/usr/share/doc/$pkg/examples/policies/"
      install -D -m 0644 "$root/packaging/assist-jumphost.service" "$dir/lib/systemd/system/assist-jumphost.service"
      printf '/etc/assist-jumphost/jumphost.toml\n/etc/assist-jumphost/policies/00-policy.toml\n' > "$dir/DEBIAN/conffiles"
      install -m 0755 "$root/packaging/jumphost.postinst" "$dir/DEBIAN/postinst"
      install -m 0755 "$root/packaging/jumphost.postrm" "$dir/DEBIAN/postrm"
      ;;
    assist-client)
      install -D -m 0644 "$root/client/README.md" "$dir/usr/share/doc/$pkg/README.md"
      install -D -m 0644 "$root/client/examples/client.toml" "$dir/etc/assist-client/client.toml"
      install -D -m 0644 "$root/client/assist-client.service" "$dir/lib/systemd/system/assist-client.service"
      printf '/etc/assist-client/client.toml\n' > "$dir/DEBIAN/conffiles"
      install -m 0755 "$root/packaging/client.postinst" "$dir/DEBIAN/postinst"
      install -m 0755 "$root/packaging/client.postrm" "$dir/DEBIAN/postrm"
      ;;
    support-cli)
      install -D -m 0644 "$root/support-cli/README.md" "$dir/usr/share/doc/$pkg/README.md"
      ;;
  esac
  # dpkg-shlibdeps reads the package's name from a control file of source form.
  mkdir -p "$work/shlibs/debian"
  printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" > "$work/shlibs/debian/control"
  local depends
  depends=$(cd "$work/shlibs" && dpkg-shlibdeps -O "$dir/usr/bin/$pkg" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  [ "$pkg" = assist-jumphost ] && depends="$depends, adduser"
  local size
  size=$(du -k -s --exclude=DEBIAN "$dir" | cut -f1)
  {
    printf 'Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: %s\n' "$pkg" "$version" "$arch" "$maintainer"
    printf 'Installed-Size: %s\nDepends: %s\nSection: net\nPriority: optional\n' "$size" "$depends"
    printf 'Homepage: https://localhost/assist\n'
    printf 'Description: %s\n' "$summary"
    printf '%s\n' "$description" | fold -s -w 78 | sed 's/ *$//; s/^/ /'
  } > "$dir/DEBIAN/control"
  (cd "$dir" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$dir/DEBIAN/md5sums"
  chmod 0644 "$dir/DEBIAN/control" "$dir/DEBIAN/md5sums" "$dir"/DEBIAN/conffiles 2>/dev/null || true
  dpkg-deb --root-owner-group -Zxz --build "$dir" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "$out/${pkg}_${version}_${arch}.deb"
}

build assist-jumphost "remote assistance jump host (SSH relay)" \
  "The public relay of the remote assistance system: an SSH server that routes support engineers to customer machines by serial number through reverse tunnels the machines hold, with an IP allowlist for engineers, expiry of registered device keys, live revocation and an audit trail. The engineer's session is encrypted end to end; the relay never sees it."
build assist-client "remote assistance agent for customer machines" \
  "Runs on a customer machine behind NAT. While the owner enables assistance on its local web page or command line, it holds an outbound SSH session with reverse forwards to the vendor's jump host and admits the support engineer who has the one-time code, for that window only."
build support-cli "support engineer's tool for remote assistance" \
  "Turns the one-time code a customer reads out into an SSH session on the customer's machine through the jump host, after the machine has proved that it knows the code. Also forwards a local port to a service of the machine and exports keys for stock OpenSSH."
