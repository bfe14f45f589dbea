//! Policy parsing and merging, without a disk: the input is one or more policy files
//! separated by NUL bytes (which TOML never contains), named `00.toml`, `01.toml`, … in
//! merge order. Never panics; an error is one non-empty line naming one of the files.
#![no_main]

use std::path::PathBuf;

use assist_jumphost::policy::Policy;
use libfuzzer_sys::fuzz_target;

/// More files add nothing the merge does not already do with a few.
const MAX_FILES: usize = 8;

fuzz_target!(|data: &[u8]| {
    let texts: Vec<String> = data
        .split(|&b| b == 0)
        .take(MAX_FILES)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let names: Vec<PathBuf> = (0..texts.len())
        .map(|i| PathBuf::from(format!("{i:02}.toml")))
        .collect();
    let files = || {
        names
            .iter()
            .zip(&texts)
            .map(|(n, t)| (n.as_path(), t.as_str()))
    };
    match Policy::from_texts(files()) {
        Ok(policy) => {
            assert_eq!(policy.files(), names.as_slice());
            let summary = policy.summary();
            assert!(summary.starts_with("files ("), "{summary}");
            // A merge that works means every file works alone.
            for (name, text) in files() {
                if let Err(e) = Policy::from_toml(name, text) {
                    panic!("{} fails alone but merged fine: {e}", name.display());
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.trim().is_empty());
            assert!(!message.contains('\n'), "not one line: {message:?}");
            assert!(
                names
                    .iter()
                    .any(|n| message.contains(&*n.to_string_lossy())),
                "names no file: {message}"
            );
        }
    }
});
