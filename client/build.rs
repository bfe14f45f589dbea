//! Fetches the page's terminal widget (xterm.js, pinned with its integrity hash in
//! `assets/package-lock.json`) from the npm registry when it is not there yet, so the
//! binary can embed it: the page loads nothing from a CDN, and the repository holds none
//! of its code.
//!
//! Then it gzips every asset the page serves into `OUT_DIR`, which the binary embeds
//! (`web::assets`): xterm.js alone is 480 KB as text and 120 KB compressed, and every
//! browser takes gzip.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// What the page serves, from `assets/`, and the name of its gzipped copy in `OUT_DIR`.
const ASSETS: [(&str, &str); 6] = [
    ("index.html", "index.html.gz"),
    ("app.js", "app.js.gz"),
    ("app.css", "app.css.gz"),
    ("terminal.js", "terminal.js.gz"),
    ("node_modules/@xterm/xterm/lib/xterm.js", "xterm.js.gz"),
    ("node_modules/@xterm/xterm/css/xterm.css", "xterm.css.gz"),
];

fn main() {
    // Read when the script runs, not baked in when it is compiled: a target folder shared
    // by two checkouts (a git worktree) reuses the compiled script for both.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| panic!("cargo sets CARGO_MANIFEST_DIR"));
    let assets = Path::new(&manifest).join("assets");
    fetch_xterm(&assets);
    let out = std::env::var_os("OUT_DIR").unwrap_or_else(|| panic!("cargo sets OUT_DIR"));
    for (source, gz) in ASSETS {
        let source = assets.join(source);
        println!("cargo:rerun-if-changed={}", source.display());
        let text =
            std::fs::read(&source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        let packed = gzip(&text).unwrap_or_else(|e| panic!("gzip {}: {e}", source.display()));
        let target = Path::new(&out).join(gz);
        std::fs::write(&target, packed)
            .unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
    }
}

/// No name and no time in the header (flate2's default): the same bytes every build.
fn gzip(text: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(text)?;
    encoder.finish()
}

fn fetch_xterm(assets: &Path) {
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
        .arg(assets)
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
