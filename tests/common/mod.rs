//! Shared test fixtures: a temporary root laid out like a microvm.nix host, and a way to run a
//! test inside a private mount namespace so its bind mounts die with it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PREPARE: &str = env!("CARGO_BIN_EXE_microvm-workspaces-prepare");
pub const LINK: &str = env!("CARGO_BIN_EXE_microvm-link");
pub const GENERATOR: &str = env!("CARGO_BIN_EXE_microvm-workspaces-generator");
/// An unprivileged user that need not exist in /etc/passwd: numbers are enough for
/// ownership, setfsuid and the unsafe-transition rule.
pub const ALICE: u32 = 4242;
pub const BOB: u32 = 4343;

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests create root-owned trees, set trusted xattrs and mount: run them as root (CI does)"
    );
}

/// Runs the calling test again in a private mount namespace (`unshare -m`) and reports
/// whether the caller *is* that isolated run. The outer run asserts the inner one passed.
pub fn isolated(name: &str) -> bool {
    require_root();
    if std::env::var("MVW_TEST_NS").as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("test executable");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("MVW_TEST_NS", name)
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a private mount namespace failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// `if !in_mount_ns!(name) { return }` as one line at the top of a test that mounts.
#[macro_export]
macro_rules! in_mount_ns {
    ($name:ident) => {
        if !common::isolated(stringify!($name)) {
            return;
        }
    };
}

pub struct Fx {
    pub dir: tempfile::TempDir,
}

impl Fx {
    pub fn new() -> Fx {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("mvw-test-")
            .tempdir()
            .expect("tempdir");
        // The root itself must not be group/world writable for the owner checks to be
        // meaningful; tempdir makes it 0700, which is fine.
        Fx { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The real path of an inside path.
    pub fn p(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    pub fn mkdir(&self, inside: &str, uid: u32, mode: u32) -> PathBuf {
        let p = self.p(inside);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// A repo owned by `uid` (its parents root-owned, like /home/<user> would be after the
    /// last component).
    pub fn repo(&self, inside: &str, uid: u32) -> PathBuf {
        let p = self.p(inside);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        self.mkdir(inside, uid, 0o755)
    }

    pub fn write(&self, inside: &str, text: &[u8]) -> PathBuf {
        let p = self.p(inside);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn symlink(&self, target: impl AsRef<Path>, inside: &str) {
        let p = self.p(inside);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// A symlink owned by `uid` (what a user's own `ln -s` makes).
    pub fn symlink_as(&self, target: impl AsRef<Path>, inside: &str, uid: u32) {
        self.symlink(target, inside);
        std::os::unix::fs::lchown(self.p(inside), Some(uid), Some(uid)).unwrap();
    }

    /// A microvm.nix runner for `vm` in the store, linked as `<stateDir>/<vm>/current`,
    /// recording the given virtiofs shares (tag, source as written).
    pub fn runner(&self, vm: &str, shares: &[(&str, &[u8])]) {
        let store = format!("/nix/store/0000-microvm-{vm}");
        for (tag, source) in shares {
            let mut line = source.to_vec();
            line.push(b'\n');
            self.write(
                &format!("{store}/share/microvm/virtiofs/{tag}/source"),
                &line,
            );
            self.write(
                &format!("{store}/share/microvm/virtiofs/{tag}/socket"),
                format!("{vm}-virtiofs-{tag}.sock\n").as_bytes(),
            );
        }
        self.write(&format!("{store}/share/microvm/hypervisor"), b"qemu\n");
        std::fs::create_dir_all(self.p(&format!("{store}/bin"))).unwrap();
        self.mkdir(&format!("/var/lib/microvms/{vm}"), 0, 0o755);
        self.symlink(&store, &format!("/var/lib/microvms/{vm}/current"));
    }

    pub fn config(&self, json: &str) {
        self.write("/etc/microvm-workspaces/config.json", json.as_bytes());
    }

    pub fn run(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .env("MICROVM_WORKSPACES_ROOT", self.root())
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env_remove("SUDO_UID")
            .args(args)
            .output()
            .expect("run binary")
    }

    pub fn prepare(&self, vm: &str) -> Output {
        self.run(PREPARE, &[vm])
    }

    /// Prepare must succeed; returns its stdout.
    pub fn prepare_ok(&self, vm: &str) -> String {
        let out = self.prepare(vm);
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn record(&self, vm: &str) -> serde_json::Value {
        let text = std::fs::read(self.p(&format!("/run/microvm-workspaces/{vm}.json"))).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        snapshot(self.root())
    }
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The run failed with exactly one line on stderr containing every `needle`.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err:?}");
    for n in needles {
        assert!(err.contains(n), "error {err:?} does not mention {n:?}");
    }
}

/// Owner, group, mode, type, link target, placeholder mark and content of every file under
/// `dir`: two equal snapshots mean nothing observable changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mut desc = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
            if m.file_type().is_symlink() {
                desc += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
            } else if m.is_dir() {
                desc += &format!(" mark={}", is_marked(&p));
                todo.push(p.clone());
            } else if m.is_file() {
                desc += &format!(" {:?}", std::fs::read(&p).unwrap_or_default());
            } else {
                // A FIFO or socket: its type, never opened (a FIFO would block).
                desc += &format!(" {:?}", m.file_type());
            }
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), desc);
        }
    }
    out
}

pub fn is_marked(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 32];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        nix::libc::lgetxattr(
            c.as_ptr(),
            c"trusted.microvm-workspaces".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n > 0 && &buf[..n as usize] == b"placeholder"
}

pub fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Every mount point in this mount namespace, one entry per mount (stacked mounts repeat).
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(f))))
        .collect()
}

/// How many mounts sit on `p` (more than one: stacked).
pub fn mount_count(p: &Path) -> usize {
    mount_points().iter().filter(|m| *m == p).count()
}

pub fn is_mountpoint(p: &Path) -> bool {
    mount_count(p) > 0
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}
