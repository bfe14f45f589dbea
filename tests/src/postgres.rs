//! A private PostgreSQL cluster for one test: Debian's `postgresql` binaries, `initdb` into
//! a temporary folder, the server on a free loopback port with its socket in that folder,
//! run as the `postgres` account (the server refuses root), stopped when dropped.
//!
//! Clients log in over TCP with a password (scram-sha-256), as a jump host in production
//! would; only the folder's own socket trusts local users.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{Proc, READY_TIMEOUT, run_ok, start_on_free_port, text};

/// The superuser made by `initdb`, and the database the jump hosts share.
pub const USER: &str = "assist";
pub const DATABASE: &str = "assist";
/// The superuser's password (also in [`Postgres::password_file`]).
pub const PASSWORD: &str = "pg-test-password-7f3c";

pub struct Postgres {
    proc: Proc,
    pub port: u16,
    /// A file holding [`PASSWORD`], for `database_password_file`.
    pub password_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's `bin` folder.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (scripts/test.sh installs postgresql)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin (scripts/test.sh installs postgresql)")
        .1
}

/// uid and gid of the `postgres` account the Debian package makes.
fn postgres_account() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = run_ok(Command::new("id").arg(flag).arg("postgres"), "id postgres");
        text(&out.stdout).trim().parse().expect("a numeric id")
    };
    (id("-u"), id("-g"))
}

impl Postgres {
    /// Makes and starts the cluster; returns once it answers queries.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = postgres_account();
        let run_as = |cmd: &mut Command| {
            cmd.uid(uid).gid(gid);
        };
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let data = dir.path().join("data");
        let password_file = dir.path().join("password");
        fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        std::os::unix::fs::chown(&password_file, Some(uid), Some(gid)).unwrap();
        let bin = bin_dir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["--encoding=UTF8", "--locale=C.UTF-8"])
            .current_dir(dir.path());
        run_as(&mut initdb);
        run_ok(&mut initdb, "initdb");

        let socket_dir = dir.path().to_path_buf();
        let (proc, addr) = start_on_free_port("postgres", |port| {
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&socket_dir)
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "max_connections=200"])
                .current_dir(&socket_dir);
            run_as(&mut cmd);
            Proc::spawn(cmd, "postgres")
        });
        let pg = Postgres {
            proc,
            port: addr.port(),
            password_file,
            _dir: dir,
        };
        // Accepting TCP is not answering queries yet (recovery, startup): poll a login.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = loop {
            match postgres::Client::connect(&pg.url_with_password("postgres"), postgres::NoTls) {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "postgres did not answer: {e}; stderr:\n{}",
                        pg.proc.stderr()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        client
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .expect("create the database");
        pg
    }

    /// `postgresql://assist@127.0.0.1:PORT/assist`, without the password.
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The URL of database `db` with the password in it, for the test's own queries.
    fn url_with_password(&self, db: &str) -> String {
        format!(
            "postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// jumphost.toml lines putting the store in this cluster (password from a file).
    pub fn jumphost_config(&self) -> String {
        format!(
            "database = \"{}\"\ndatabase_password_file = \"{}\"\n",
            self.url(),
            self.password_file.display()
        )
    }

    /// A connection to the shared database, for the test's own queries.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url_with_password(DATABASE), postgres::NoTls)
            .expect("connect to the test database")
    }

    /// The server's log so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, the server's children go with it.
        if self.proc.is_running() {
            self.proc.signal(3);
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.proc.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.proc.kill9();
    }
}
