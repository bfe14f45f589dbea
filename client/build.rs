//! Fetches the page's terminal widget (xterm.js, pinned with its integrity hash in
//! `assets/package-lock.json`) from the npm registry when it is not there yet, so the
//! binary can embed it: the page loads nothing from a CDN, and the repository holds none
//! of its code.

use std::path::Path;
use std::process::Command;

fn main() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    println!(
        "cargo:rerun-if-changed={}",
        assets.join("package-lock.json").display()
    );
    let xterm = assets.join("node_modules/@xterm/xterm/lib/xterm.js");
    println!("cargo:rerun-if-changed={}", xterm.display());
    if xterm.exists() {
        return;
    }
    // `npm ci` installs exactly what the lock file pins and checks each package's hash.
    let status = Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(&assets)
        .status();
    match status {
        Ok(s) if s.success() && xterm.exists() => {}
        Ok(s) => panic!(
            "`npm ci --prefix {}` failed ({s}): the page's terminal widget (xterm.js) could \
             not be fetched from the npm registry",
            assets.display()
        ),
        Err(e) => panic!(
            "cannot run npm ({e}): building assist-client needs npm (Debian: `apt-get install \
             npm`) to fetch the page's terminal widget, xterm.js, pinned in {}",
            assets.join("package-lock.json").display()
        ),
    }
}
