//! Policy parsing and merging: good folders, every kind of bad file, and the shipped examples.

use std::net::IpAddr;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

use super::*;

fn key_line(seed: u8, comment: &str) -> String {
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
    key.set_comment(comment);
    key.public_key().to_openssh().unwrap()
}

fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// Loads a folder that must fail; returns the error text.
fn load_err(files: &[(&str, &str)]) -> String {
    let dir = folder(files);
    Policy::load_dir(dir.path()).unwrap_err().to_string()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn files_merge_in_name_order() {
    let alice1 = key_line(1, "alice@laptop");
    let alice2 = key_line(2, "alice@desk");
    let dir = folder(&[
        (
            "20-support.toml",
            &format!(
                "[[support]]\nname = \"alice\"\npublic_key = \"{alice1}\"\n\n[[support]]\nname = \"alice\"\npublic_key = \"{alice2}\"\n"
            ),
        ),
        (
            "10-allow.toml",
            "[allowlist]\nsupport_cidrs = [\"10.20.0.0/16\", \"192.0.2.7\", \"2001:db8::1\"]\n[serials]\nallow = [\"SN-*\"]\n",
        ),
        (
            "30-more.toml",
            "[allowlist]\nsupport_cidrs = [\"127.0.0.1/32\"]\nclient_cidrs = [\"198.51.100.0/24\"]\n[serials]\nallow = [\"LAB-??\"]\n[keys]\nclient_key_ttl = \"7d\"\n",
        ),
        ("notes.txt", "not a policy"),
        (".#20-support.toml", "editor lock file"),
    ]);
    let policy = Policy::load_dir(dir.path()).unwrap();
    let names: Vec<_> = policy
        .files()
        .iter()
        .map(|f| f.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["10-allow.toml", "20-support.toml", "30-more.toml"]);

    assert!(policy.engineer_from_allowed(ip("10.20.3.4")));
    assert!(policy.engineer_from_allowed(ip("192.0.2.7")));
    assert!(!policy.engineer_from_allowed(ip("192.0.2.8")));
    assert!(policy.engineer_from_allowed(ip("2001:db8::1")));
    assert!(policy.engineer_from_allowed(ip("127.0.0.1")));
    assert!(
        policy.engineer_from_allowed(ip("::ffff:127.0.0.1")),
        "v4-mapped v6 is the v4 address"
    );
    assert!(!policy.engineer_from_allowed(ip("10.21.0.1")));
    assert!(policy.client_from_allowed(ip("198.51.100.9")));
    assert!(!policy.client_from_allowed(ip("203.0.113.1")));

    assert_eq!(
        policy.engineers().find(|(n, _)| *n == "alice").unwrap().1,
        2
    );
    assert!(!policy.is_engineer("bob"));
    let k2 = PublicKey::from_openssh(&alice2).unwrap();
    assert!(policy.engineer_key("alice", &k2).is_some());
    assert!(policy.engineer_key("bob", &k2).is_none());

    assert!(policy.serial_allowed("SN-0001"));
    assert!(policy.serial_allowed("LAB-12"));
    assert!(!policy.serial_allowed("LAB-123"));
    assert!(!policy.serial_allowed("sn-0001"));
    assert_eq!(policy.client_key_ttl(), Duration::from_secs(7 * 86400));
    assert_eq!(
        policy.max_assistance(),
        assist_proto::limits::DEFAULT_MAX_ASSISTANCE
    );
    assert!(
        policy.summary().contains("alice (2 keys, every serial)"),
        "{}",
        policy.summary()
    );
}

#[test]
fn absent_sections_are_closed_defaults() {
    let policy = Policy::load_dir(folder(&[("empty.toml", "# nothing yet\n")]).path()).unwrap();
    assert!(!policy.engineer_from_allowed(ip("127.0.0.1")));
    assert!(
        policy.client_from_allowed(ip("203.0.113.1")),
        "empty client_cidrs: anywhere"
    );
    assert!(!policy.serial_allowed("SN-1"));
    assert_eq!(
        policy.client_key_ttl(),
        assist_proto::limits::DEFAULT_CLIENT_KEY_TTL
    );
    assert_eq!(
        policy.max_assistance(),
        assist_proto::limits::DEFAULT_MAX_ASSISTANCE
    );
    assert_eq!(policy.warnings().len(), 3);
    let default = Policy::default();
    assert_eq!(default.client_key_ttl(), policy.client_key_ttl());
    assert!(!default.serial_allowed("SN-1"));
}

#[test]
fn unknown_keys_are_rejected_with_file_key_and_line() {
    let err = load_err(&[("a.toml", "[serials]\nallow = []\nallowed = [\"x\"]\n")]);
    assert!(
        err.contains("a.toml") && err.contains("allowed") && err.contains("line 3"),
        "{err}"
    );
    let err = load_err(&[("b.toml", "[allowlists]\nsupport_cidrs = []\n")]);
    assert!(
        err.contains("b.toml") && err.contains("allowlists") && err.contains("line 1"),
        "{err}"
    );
    let err = load_err(&[(
        "c.toml",
        "[[support]]\nname = \"a\"\npublic_key = \"x\"\nrole = \"admin\"\n",
    )]);
    assert!(err.contains("c.toml") && err.contains("role"), "{err}");
}

#[test]
fn bad_cidr_is_named() {
    let err = load_err(&[
        ("00-ok.toml", "[serials]\nallow = [\"*\"]\n"),
        (
            "10-bad.toml",
            "[allowlist]\nclient_cidrs = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]\n",
        ),
    ]);
    assert!(err.contains("10-bad.toml"), "{err}");
    assert!(
        err.contains("[allowlist] client_cidrs") && err.contains("10.0.0.0/33"),
        "{err}"
    );
    assert!(err.contains("line 3"), "{err}");
    let err = load_err(&[("a.toml", "[allowlist]\nsupport_cidrs = [\"localhost\"]\n")]);
    assert!(
        err.contains("support_cidrs") && err.contains("localhost"),
        "{err}"
    );
    let err = load_err(&[("a.toml", "[allowlist]\nsupport_cidrs = \"10.0.0.0/8\"\n")]);
    assert!(err.contains("a.toml") && err.contains("line 2"), "{err}");
}

#[test]
fn bad_engineer_key_or_name_is_named() {
    let err = load_err(&[(
        "s.toml",
        "[[support]]\nname = \"alice\"\npublic_key = \"ssh-ed25519 AAAAnotbase64!\"\n",
    )]);
    assert!(
        err.contains("s.toml") && err.contains("public_key") && err.contains("alice"),
        "{err}"
    );
    assert!(err.contains("line 3"), "{err}");
    let line = key_line(1, "x");
    let err = load_err(&[(
        "s.toml",
        &format!("[[support]]\nname = \"../root\"\npublic_key = \"{line}\"\n"),
    )]);
    assert!(
        err.contains("s.toml") && err.contains("[[support]] name") && err.contains("line 2"),
        "{err}"
    );
    let err = load_err(&[("s.toml", "[[support]]\nname = \"alice\"\n")]);
    assert!(
        err.contains("s.toml") && err.contains("public_key"),
        "{err}"
    );
}

#[test]
fn bad_glob_is_named() {
    let err = load_err(&[("g.toml", "[serials]\nallow = [\"SN-[\"]\n")]);
    assert!(
        err.contains("g.toml") && err.contains("[serials] allow") && err.contains("SN-["),
        "{err}"
    );
    let err = load_err(&[("g.toml", "[serials]\nallow = [\"\"]\n")]);
    assert!(
        err.contains("g.toml") && err.contains("[serials] allow"),
        "{err}"
    );
}

#[test]
fn bad_duration_is_named() {
    let err = load_err(&[("k.toml", "[keys]\nmax_assistance = \"8 hourz\"\n")]);
    assert!(
        err.contains("k.toml") && err.contains("[keys] max_assistance") && err.contains("line 2"),
        "{err}"
    );
    let err = load_err(&[("k.toml", "[keys]\nclient_key_ttl = \"0s\"\n")]);
    assert!(
        err.contains("client_key_ttl") && err.contains("longer than zero"),
        "{err}"
    );
    let err = load_err(&[("k.toml", "[keys]\nclient_key_ttl = 30\n")]);
    assert!(err.contains("k.toml") && err.contains("line 2"), "{err}");
}

#[test]
fn scalar_set_in_two_files_names_both() {
    let err = load_err(&[
        ("10-keys.toml", "[keys]\nmax_assistance = \"8h\"\n"),
        (
            "20-keys.toml",
            "[keys]\nclient_key_ttl = \"1d\"\nmax_assistance = \"1h\"\n",
        ),
    ]);
    assert!(
        err.contains("10-keys.toml") && err.contains("20-keys.toml"),
        "{err}"
    );
    assert!(err.contains("[keys] max_assistance"), "{err}");
}

#[test]
fn syntax_error_is_named() {
    let err = load_err(&[("x.toml", "[serials]\nallow = [\"SN-*\"\n")]);
    assert!(err.contains("x.toml") && err.contains("line"), "{err}");
}

#[test]
fn folder_without_policy_files_is_an_error() {
    let err = load_err(&[("README.md", "hi")]);
    assert!(err.contains("no *.toml"), "{err}");
    let err = Policy::load_dir(Path::new("/nonexistent/policies"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/policies"), "{err}");
}

#[test]
fn shipped_example_policies_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for file in policy_files(&dir).unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        Policy::from_toml(&file, &text).unwrap_or_else(|e| panic!("{e}"));
    }
    let policy = Policy::load_dir(&dir).unwrap();
    assert!(policy.files().len() >= 4);
    assert!(policy.engineer_from_allowed(ip("127.0.0.1")));
    assert!(policy.is_engineer("alice"));
    assert!(policy.serial_allowed("SN-0001"));
    assert!(!policy.serial_allowed("XX-0001"));
    assert_eq!(policy.client_key_ttl(), Duration::from_secs(30 * 86400));
    assert_eq!(policy.max_assistance(), Duration::from_secs(8 * 3600));
    assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
}

#[test]
fn penalties_section_is_optional_checked_and_set_once() {
    let p = Policy::from_toml(Path::new("a.toml"), "").unwrap();
    assert_eq!(*p.penalties(), crate::penalty::PenaltySettings::default());
    let p = Policy::from_toml(
        Path::new("a.toml"),
        "[penalties]\nfree_failures = 0\npenalty = \"1s\"\nban = \"2h\"\nregister_burst = 5\n",
    )
    .unwrap();
    let s = p.penalties();
    assert_eq!(
        (s.free_failures, s.penalty, s.ban, s.register_burst),
        (0, Duration::from_secs(1), Duration::from_secs(7200), 5)
    );
    assert_eq!(
        s.max_failures,
        crate::penalty::PenaltySettings::default().max_failures
    );
    let err = load_err(&[("a.toml", "[penalties]\nban = \"soon\"\n")]);
    assert!(
        err.contains("[penalties] ban") && err.contains("line 2"),
        "{err}"
    );
    let err = load_err(&[("a.toml", "[penalties]\nmax_failures = 0\n")]);
    assert!(err.contains("max_failures must be at least 1"), "{err}");
    let err = load_err(&[("a.toml", "[penalties]\nmaxfailures = 3\n")]);
    assert!(err.contains("maxfailures"), "{err}");
    let err = load_err(&[
        ("a.toml", "[penalties]\nban = \"1h\"\n"),
        ("b.toml", "[penalties]\npenalty = \"1s\"\n"),
    ]);
    assert!(
        err.contains("[penalties]") && err.contains("b.toml"),
        "{err}"
    );
}

#[test]
fn texts_merge_like_the_folder_they_came_from() {
    let files = [
        (
            "a.toml",
            "[serials]\nallow = [\"SN-*\"]\n[keys]\nclient_key_ttl = \"1d\"\n",
        ),
        ("b.toml", "[serials]\nallow = [\"LAB-*\"]\n"),
    ];
    let dir = folder(&files);
    let from_dir = Policy::load_dir(dir.path()).unwrap();
    let from_texts =
        Policy::from_texts(files.iter().map(|(name, text)| (Path::new(*name), *text))).unwrap();
    assert_eq!(
        from_texts.serial_patterns().collect::<Vec<_>>(),
        from_dir.serial_patterns().collect::<Vec<_>>()
    );
    assert_eq!(from_texts.client_key_ttl(), from_dir.client_key_ttl());
    let err = Policy::from_texts([
        (Path::new("a.toml"), "[keys]\nclient_key_ttl = \"1d\"\n"),
        (Path::new("b.toml"), "[keys]\nclient_key_ttl = \"2d\"\n"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("a.toml") && err.contains("b.toml"), "{err}");
}

/// Found by the `policy` fuzz target: a broken table header gave a two-line error.
#[test]
fn every_error_is_one_line_naming_the_file() {
    let err = Policy::from_toml(Path::new("00.toml"), "[se]asirl\nallow = [\"SN-[\"]\n")
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\n'), "{err:?}");
    assert!(err.starts_with("00.toml: line 1, column 5: "), "{err}");
}

#[test]
fn engineer_scopes_limit_serials_per_key_and_widen_when_listed_twice() {
    let a1 = key_line(1, "alice@laptop");
    let a2 = key_line(2, "alice@desk");
    let text = format!(
        "[[support]]\nname = \"alice\"\npublic_key = \"{a1}\"\nserials = [\"SN-EU-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{a2}\"\n\n\
         [[support]]\nname = \"bob\"\npublic_key = \"{a1}\"\nserials = []\n"
    );
    let policy = Policy::from_toml(Path::new("p.toml"), &text).unwrap();
    let k1 = PublicKey::from_openssh(&a1).unwrap();
    let k2 = PublicKey::from_openssh(&a2).unwrap();
    let scope = policy.engineer_key("alice", &k1).unwrap();
    assert!(scope.covers("SN-EU-1") && !scope.covers("SN-US-1"));
    assert_eq!(scope.to_string(), "serials SN-EU-*");
    let scope = policy.engineer_key("alice", &k2).unwrap();
    assert!(scope.covers("SN-US-1"), "no serials: every serial");
    assert!(!policy.engineer_key("bob", &k1).unwrap().covers("SN-EU-1"));

    // The same key in a second file widens its scope rather than replacing it.
    let more =
        format!("[[support]]\nname = \"alice\"\npublic_key = \"{a1}\"\nserials = [\"LAB-*\"]\n");
    let policy = Policy::from_texts([
        (Path::new("a.toml"), text.as_str()),
        (Path::new("b.toml"), more.as_str()),
    ])
    .unwrap();
    let scope = policy.engineer_key("alice", &k1).unwrap();
    assert!(scope.covers("SN-EU-1") && scope.covers("LAB-9") && !scope.covers("SN-US-1"));
    assert!(
        policy.summary().contains("alice (2 keys, every serial)"),
        "{}",
        policy.summary()
    );
}

#[test]
fn support_cas_are_read_with_their_scope_and_bad_ones_named() {
    let ca = key_line(9, "vendor-ca");
    let text = format!("[[support_ca]]\npublic_key = \"{ca}\"\nserials = [\"SN-*\"]\n");
    let policy = Policy::from_toml(Path::new("ca.toml"), &text).unwrap();
    assert!(policy.has_support_cas());
    let key = PublicKey::from_openssh(&ca).unwrap();
    let listed = policy.support_ca(key.key_data()).unwrap();
    assert!(listed.scope.covers("SN-1") && !listed.scope.covers("LAB-1"));
    let other = PublicKey::from_openssh(&key_line(8, "")).unwrap();
    assert!(policy.support_ca(other.key_data()).is_none());
    assert!(
        policy
            .summary()
            .contains("engineer certificate CAs (1): SHA256:"),
        "{}",
        policy.summary()
    );
    assert!(
        policy
            .warnings()
            .iter()
            .all(|w| !w.contains("nobody can hop")),
        "a CA is enough"
    );

    let err = load_err(&[(
        "ca.toml",
        "[[support_ca]]\npublic_key = \"ssh-ed25519 AAAA\"\n",
    )]);
    assert!(
        err.contains("ca.toml")
            && err.contains("line 2")
            && err.contains("[[support_ca]] public_key"),
        "{err}"
    );
    let err = load_err(&[(
        "ca.toml",
        &format!("[[support_ca]]\npublic_key = \"{ca}\"\nserials = [\"\"]\n"),
    )]);
    assert!(
        err.contains("line 3") && err.contains("[[support_ca]] serials"),
        "{err}"
    );
    let err = load_err(&[(
        "ca.toml",
        &format!("[[support_ca]]\npublic_key = \"{ca}\"\nprincipals = [\"x\"]\n"),
    )]);
    assert!(err.contains("principals"), "{err}");
    let err = load_err(&[(
        "s.toml",
        &format!("[[support]]\nname = \"alice\"\npublic_key = \"{ca}\"\nserials = [\"[\"]\n"),
    )]);
    assert!(err.contains("[[support]] \"alice\" serials"), "{err}");
}
