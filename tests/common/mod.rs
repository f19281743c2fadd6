//! Shared test fixtures: a temporary root laid out like a microvm.nix host, one way to run the
//! binaries ([`Run`]), one tree walker ([`walk`]) under every check that looks at a whole tree,
//! and a way to run a test inside a private mount namespace so its bind mounts die with it.
#![allow(dead_code)]

pub mod api;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PREPARE: &str = env!("CARGO_BIN_EXE_microvm-workspaces-prepare");
pub const LINK: &str = env!("CARGO_BIN_EXE_microvm-link");
pub const GENERATOR: &str = env!("CARGO_BIN_EXE_microvm-workspaces-generator");
/// An unprivileged user that need not exist in /etc/passwd: numbers are enough for
/// ownership, setfsuid and the unsafe-transition rule.
pub const ALICE: u32 = 4242;
pub const BOB: u32 = 4343;

/// The first thing every test of the root set does, directly or through [`Fx::new`],
/// [`rig`] or [`isolated`]: without root it fails saying why, it never skips.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the root set (tests/root, tests/reliability) creates root-owned trees, sets trusted \
         xattrs and mounts: run it as root (CI does); `cargo test` alone runs the tests that \
         need no root"
    );
}

/// Runs the calling test again in a private mount namespace (`unshare -m`) and reports
/// whether the caller *is* that isolated run. The outer run asserts the inner one passed.
///
/// `module` is the caller's `module_path!()` and `name` its function name: the test harness
/// names a test by its path inside the test crate (`crash::name` in a test binary with
/// modules, `name` in one without), and the re-run selects exactly that one.
pub fn isolated(module: &str, name: &str) -> bool {
    require_root();
    let full = test_name(module, name);
    if std::env::var("MVW_TEST_NS").as_deref() == Ok(full.as_str()) {
        return true;
    }
    let exe = std::env::current_exe().expect("test executable");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([full.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("MVW_TEST_NS", &full)
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{full} in a private mount namespace failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the isolated run reported (counts of kills, cases, attacks), for `--nocapture`.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    false
}

/// The harness's name of test `name` in module `module` (a `module_path!()`, whose first
/// segment is the test crate and not part of the name).
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// `if !in_mount_ns!(name) { return }` as one line at the top of a test that mounts.
#[macro_export]
macro_rules! in_mount_ns {
    ($name:ident) => {
        if !$crate::common::isolated(module_path!(), stringify!($name)) {
            return;
        }
    };
}

pub struct Fx {
    pub dir: tempfile::TempDir,
}

/// Placeholders and live roots are sealed (immutable, `fs::seal`): a test's tree is unsealed
/// before `TempDir` removes it, or they would stay behind.
impl Drop for Fx {
    fn drop(&mut self) {
        unseal_tree(self.root());
    }
}

/// Clears the immutable flag of every directory at or below `dir` (not following symlinks).
pub fn unseal_tree(dir: &Path) {
    use rustix::fs::IFlags;
    let Ok(md) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !md.is_dir() {
        return;
    }
    if let Ok(f) = std::fs::File::open(dir) {
        if let Ok(flags) = rustix::fs::ioctl_getflags(&f) {
            if flags.contains(IFlags::IMMUTABLE) {
                let _ = rustix::fs::ioctl_setflags(&f, flags - IFlags::IMMUTABLE);
            }
        }
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        unseal_tree(&e.path());
    }
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

    /// The nixfiles VM sharing its entry, and each of `hosts` sharing its own directory below
    /// it (`nixfiles/hosts/microvms/<vm>`, tag `host`): sources nested in one repo.
    pub fn nixfiles_with_hosts(&self, hosts: &[&str]) {
        self.runner(
            "nixfiles",
            &[("nixfiles", b"/var/lib/microvm-workspaces/nixfiles")],
        );
        for vm in hosts {
            let source = format!("/var/lib/microvm-workspaces/nixfiles/hosts/microvms/{vm}");
            self.runner(vm, &[("host", source.as_bytes())]);
        }
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

    /// Pool `agents` of `vms` in the config, each with one live share `tag` of its own entry
    /// (`<workspaceDir>/.live/<vm>`, also in its runner), with `ssh` its SSH destination its
    /// own name; and the workspace dir.
    pub fn live_pool(&self, vms: &[String], tag: &str, ssh: bool) {
        let ws = "/var/lib/microvm-workspaces";
        let decl: Vec<String> = vms
            .iter()
            .map(|vm| {
                let ssh = if ssh { format!(r#""ssh": "{vm}", "#) } else { String::new() };
                format!(
                    r#""{vm}": {{{ssh}"shares": [{{"tag": "{tag}", "proto": "virtiofs", "source": "{ws}/.live/{vm}", "mountPoint": "/work"}}]}}"#
                )
            })
            .collect();
        let names: Vec<String> = vms.iter().map(|v| format!("\"{v}\"")).collect();
        self.config(&format!(
            r#"{{"vms": {{{}}}, "pools": {{"agents": [{}]}}}}"#,
            decl.join(", "),
            names.join(", ")
        ));
        for vm in vms {
            let src = format!("{ws}/.live/{vm}");
            self.runner(vm, &[(tag, src.as_bytes())]);
        }
        self.mkdir(ws, 0, 0o755);
    }

    /// `bin` re-rooted here with `args`, run to completion.
    pub fn run(&self, bin: &str, args: &[&str]) -> Output {
        Run::new(bin).root(self).args(args).output()
    }

    pub fn prepare(&self, vm: &str) -> Output {
        Run::prepare(self, vm).output()
    }

    /// `prepare --dry-run` must succeed; returns its stdout (the plan).
    pub fn prepare_dry(&self, vm: &str) -> String {
        let out = Run::prepare(self, vm).arg("--dry-run").output();
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Every entry below `dir` (not `dir` itself) with its `lstat` metadata, parents before
/// children. Symlinks are reported, never followed; directories that cannot be read are
/// skipped. Every check that looks at a whole tree goes through here.
pub fn walk(dir: &Path) -> impl Iterator<Item = (PathBuf, std::fs::Metadata)> {
    let mut todo = vec![dir.to_path_buf()];
    let mut current: Option<std::fs::ReadDir> = None;
    std::iter::from_fn(move || loop {
        let Some(rd) = current.as_mut() else {
            current = std::fs::read_dir(todo.pop()?).ok();
            continue;
        };
        match rd.next() {
            None => current = None,
            Some(Err(_)) => {}
            Some(Ok(e)) => {
                let p = e.path();
                let m = std::fs::symlink_metadata(&p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                if m.is_dir() {
                    todo.push(p.clone());
                }
                return Some((p, m));
            }
        }
    })
}

/// Owner, group, mode, type, link target, placeholder mark and content of every file under
/// `dir`: two equal snapshots mean nothing observable changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    walk(dir)
        .map(|(p, m)| {
            let mut desc = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
            if m.file_type().is_symlink() {
                desc += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
            } else if m.is_dir() {
                desc += &format!(" mark={}", is_marked(&p));
            } else if m.is_file() {
                desc += &format!(" {:?}", std::fs::read(&p).unwrap_or_default());
            } else {
                // A FIFO or socket: its type, never opened (a FIFO would block).
                desc += &format!(" {:?}", m.file_type());
            }
            (p.strip_prefix(dir).unwrap().to_path_buf(), desc)
        })
        .collect()
}

/// Names starting `.mvw-tmp-` anywhere below `root` (the temporary names of the library's
/// atomic steps; none may outlive a run).
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .map(|(p, _)| p)
        .filter(|p| p.file_name().unwrap().as_bytes().starts_with(b".mvw-tmp-"))
        .collect()
}

/// Regular files named `name` below `dir`, with their content.
pub fn files_named(dir: &Path, name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    walk(dir)
        .filter(|(p, m)| m.is_file() && p.file_name() == Some(OsStr::new(name)))
        .map(|(p, _)| {
            let text = std::fs::read(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// Relative path -> content of every non-directory below `dir` (empty if `dir` does not
/// exist): a tree of generated text files, compared whole.
pub fn text_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    walk(dir)
        .filter(|(_, m)| !m.is_dir())
        .map(|(p, _)| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), text)
        })
        .collect()
}

/// Every directory below `dir` is owned by `uid` (in a user's tree everything is made as its
/// owner, never as root).
pub fn assert_all_owned_by(dir: &Path, uid: u32, ctx: &str) {
    for (p, m) in walk(dir).filter(|(_, m)| m.is_dir()) {
        assert_eq!(m.uid(), uid, "{ctx}: {} owned by {}", p.display(), m.uid());
    }
}

/// Whether `p` itself (a symlink is not followed) carries the placeholder mark, read with
/// `lgetxattr` here rather than through the library.
pub fn is_marked(p: &Path) -> bool {
    let mut buf = [0u8; 32];
    matches!(
        rustix::fs::lgetxattr(p, "trusted.microvm-workspaces", &mut buf[..]),
        Ok(n) if &buf[..n] == b"placeholder"
    )
}

/// Does the directory `p` carry the immutable flag (`fs::seal`)?
pub fn is_sealed(p: &Path) -> bool {
    let f = std::fs::File::open(p).unwrap();
    rustix::fs::ioctl_getflags(&f)
        .unwrap()
        .contains(rustix::fs::IFlags::IMMUTABLE)
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

/// Every mount point at or below `root`, one entry per mount (stacked mounts repeat).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|p| p.starts_with(root))
        .collect()
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

/// A fixture whose mounts (bind-mounted repos, test file systems) are detached when it goes,
/// so hundreds of them can live one after another in one mount namespace.
pub struct Rig(pub Fx);

impl std::ops::Deref for Rig {
    type Target = Fx;
    fn deref(&self) -> &Fx {
        &self.0
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for _ in 0..10 {
            let mut m = mounts_under(self.0.root());
            if m.is_empty() {
                break;
            }
            m.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
            for p in m {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

pub fn rig() -> Rig {
    Rig(Fx::new())
}

/// Variables that change how the binaries behave and that a test never means to inherit:
/// [`Run`] removes them unless the test sets them on purpose.
const CLEARED: &[&str] = &[
    "MICROVM_WORKSPACES_ROOT",
    "SUDO_UID",
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    api::FAILPOINT_ENV,
];

/// The one way tests run a binary: `Run::link(&fx).user(ALICE).cwd("/home/alice/r")
/// .args(["vm1", "--no-restart"]).ok()`. The environment is the test's minus [`CLEARED`],
/// plus what the test sets; re-rooted at a fixture, `cwd` takes an inside path.
#[derive(Clone, Debug)]
pub struct Run {
    bin: PathBuf,
    /// `setpriv` options, when the binary runs under other credentials.
    setpriv: Vec<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    root: Option<PathBuf>,
    cwd: Option<PathBuf>,
    stdin_null: bool,
}

impl Run {
    /// `bin`, not re-rooted.
    pub fn new(bin: impl AsRef<Path>) -> Run {
        Run {
            bin: bin.as_ref().to_path_buf(),
            setpriv: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            root: None,
            cwd: None,
            stdin_null: false,
        }
    }

    /// microvm-link re-rooted at `fx`.
    pub fn link(fx: &Fx) -> Run {
        Run::new(LINK).root(fx)
    }

    /// prepare of `vm`, re-rooted at `fx`.
    pub fn prepare(fx: &Fx, vm: &str) -> Run {
        Run::new(PREPARE).root(fx).arg(vm)
    }

    /// Re-rooted at `fx` (`MICROVM_WORKSPACES_ROOT`); later `cwd`s are inside paths.
    pub fn root(mut self, fx: &Fx) -> Run {
        self.root = Some(fx.root().to_path_buf());
        self.env("MICROVM_WORKSPACES_ROOT", fx.root())
    }

    /// As root on behalf of `uid` (`--user`).
    pub fn user(self, uid: u32) -> Run {
        self.arg("--user").arg(uid.to_string())
    }

    /// The working directory: an inside path when re-rooted, else a real one.
    pub fn cwd(mut self, p: impl AsRef<Path>) -> Run {
        let p = p.as_ref();
        self.cwd = Some(match &self.root {
            Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        });
        self
    }

    /// The working directory as a real path, re-rooted or not.
    pub fn cwd_real(mut self, p: impl AsRef<Path>) -> Run {
        self.cwd = Some(p.as_ref().to_path_buf());
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Run {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator>(mut self, args: I) -> Run
    where
        I::Item: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Run {
        self.env
            .push((k.as_ref().to_os_string(), Some(v.as_ref().to_os_string())));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Run {
        env.iter().fold(self, |r, (k, v)| r.env(k, v))
    }

    /// Start from an empty environment (then only what `env` sets).
    pub fn env_clear(mut self) -> Run {
        self.env_clear = true;
        self
    }

    /// With real uid `uid`, effective uid still root (`setpriv --ruid`).
    pub fn real_uid(mut self, uid: u32) -> Run {
        self.setpriv = vec![format!("--ruid={uid}")];
        self
    }

    /// As `uid` through and through: real and effective uid and gid, no groups.
    pub fn drop_to(mut self, uid: u32) -> Run {
        self.setpriv = vec![
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ];
        self
    }

    /// Standard input from /dev/null (a binary that reads it would otherwise wait).
    pub fn stdin_null(mut self) -> Run {
        self.stdin_null = true;
        self
    }

    /// The command line, for messages.
    pub fn describe(&self) -> String {
        format!("{:?}", self.args)
    }

    pub fn command(&self) -> Command {
        let mut c = if self.setpriv.is_empty() {
            Command::new(&self.bin)
        } else {
            let mut c = Command::new("setpriv");
            c.args(&self.setpriv).arg("--").arg(&self.bin);
            c
        };
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        for k in CLEARED {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if self.stdin_null {
            c.stdin(Stdio::null());
        }
        c
    }

    pub fn output(&self) -> Output {
        self.command()
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()))
    }

    /// Runs it; it must succeed.
    pub fn ok(&self) -> Output {
        let out = self.output();
        assert_ok(&out);
        out
    }

    /// Runs it; it must succeed; its stdout.
    pub fn ok_stdout(&self) -> String {
        String::from_utf8(self.ok().stdout).unwrap()
    }

    /// Starts it with stdout and stderr discarded.
    pub fn spawn_quiet(&self) -> Child {
        self.command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs it, killing it if it is still running after `limit` (a run blocked on a FIFO is a
    /// failure of the test, not a hung suite).
    pub fn output_within(&self, limit: Duration) -> Output {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{} still running after {limit:?} (blocked?); stderr: {}",
                    self.bin.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The guest user the tests' VMs map (config `guestUid`'s default).
pub const GUEST_UID: u32 = 1000;

/// Runs `sh -c script` as `uid:gid` (no supplementary groups), as virtiofsd acts for a guest
/// caller: with the caller's ids. Returns the shell's output.
pub fn sh_as(uid: u32, gid: u32, script: &str) -> Output {
    Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ])
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv (util-linux)")
}

/// Creates `path` with `text` as `uid:gid`; the error text when that fails.
pub fn write_as(uid: u32, gid: u32, path: &Path, text: &str) -> Result<(), String> {
    let out = sh_as(
        uid,
        gid,
        &format!("printf %s '{text}' > '{}'", path.display()),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
