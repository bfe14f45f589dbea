//! Test data: random files and their SHA-256, and the configs README.md gives operators.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file = fs::File::open(path).expect("open file to hash");
    let mut hasher = sha2::Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).expect("read file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Writes `len` random bytes to `path`.
pub fn random_file(path: &Path, len: usize) {
    let mut out = std::io::BufWriter::new(fs::File::create(path).expect("create random file"));
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rand::fill(&mut chunk[..n]);
        out.write_all(&chunk[..n]).expect("write random file");
        left -= n;
    }
    out.flush().expect("write random file");
}

/// The fenced `lang` block of README.md between `<!-- NAME-snippet -->` and
/// `<!-- /NAME-snippet -->`: the configs the README gives operators, which the tests run.
pub fn readme_snippet(name: &str, lang: &str) -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("read README.md");
    let (_, rest) = readme
        .split_once(&format!("<!-- {name}-snippet -->"))
        .unwrap_or_else(|| panic!("README has the {name} snippet"));
    let (block, _) = rest
        .split_once(&format!("<!-- /{name}-snippet -->"))
        .expect("snippet end");
    block
        .trim()
        .strip_prefix(&format!("```{lang}"))
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| panic!("a ```{lang} block"))
        .to_owned()
}
