//! `microvm-link status`: for every VM, what each share showed at its start (the runtime
//! record) and shows now, and which are stale (docs/reference/cli.md#staleness).

use std::path::Path;

use serde::Serialize;

use crate::engine::entry::{EntryView, State, Workspace};
use crate::engine::shows;
use crate::fs::chase::{Tree, Trust, Walk};
use crate::fs::idmap::Guest;
use crate::fs::paths::Root;
use crate::model::config::{Config, GitMode, Seen};
use crate::model::names::VmName;
use crate::model::record::Kind;
use crate::model::record::Shows;
use crate::model::record::{self, ShareRecord};
use crate::model::runner::Share;
use crate::model::workspace::live_of;

/// The status of `vm` (checked to be known), or of every VM.
pub fn collect(
    tree: &Tree,
    cfg: &Config,
    root: &Root,
    vm: Option<&VmName>,
) -> anyhow::Result<Vec<VmStatus>> {
    let vms = match vm {
        Some(v) => {
            crate::model::runner::check_known(tree, cfg, v)?;
            vec![v.clone()]
        }
        None => all_vms(tree, cfg),
    };
    let running = Running::ask(root, &vms);
    vms.iter()
        .map(|v| status_with(tree, cfg, v, running.of(v)))
        .collect()
}

/// Which VMs run (`microvm@<vm>` active), asked of systemd for all of them in one
/// `systemctl show`. Re-rooted, systemd is not asked: nothing is known.
#[derive(Debug, Default)]
pub struct Running(std::collections::HashMap<String, bool>);

impl Running {
    pub fn ask<S: AsRef<str>>(root: &Root, vms: &[S]) -> Running {
        if root.is_rerooted() || vms.is_empty() {
            return Running::default();
        }
        let units: Vec<String> = vms
            .iter()
            .map(|v| crate::host::units::unit_name("microvm@", v.as_ref()))
            .collect();
        let Some(states) = crate::host::systemd::unit_states(&units) else {
            return Running::default();
        };
        Running(
            vms.iter()
                .zip(states)
                .filter_map(|(vm, s)| Some((vm.as_ref().to_string(), s?.active.is_active())))
                .collect(),
        )
    }

    /// `Some(true)` active, `Some(false)` not, `None` when systemd did not tell.
    pub fn of(&self, vm: &str) -> Option<bool> {
        self.0.get(vm).copied()
    }
}

/// `status`, printed: the VMs' table and, when there are pools or leases, the pools' (or
/// with `json`, `{"vms": [...], "pools": [...], "strayLeases": [...]}`).
pub fn print(
    tree: &Tree,
    cfg: &Config,
    root: &Root,
    vm: Option<&VmName>,
    json: bool,
    verbose: bool,
) -> anyhow::Result<()> {
    let rows = collect(tree, cfg, root, vm)?;
    let pools = crate::cmd::pool::collect(tree, cfg, vm)?;
    let stray = match vm {
        Some(_) => Vec::new(),
        None => crate::cmd::pool::stray_leases(tree, cfg)?,
    };
    match json {
        true => println!(
            "{:#}",
            serde_json::json!({ "vms": rows, "pools": pools, "strayLeases": stray })
        ),
        false => {
            print!("{}", table(&rows, verbose));
            if !pools.is_empty() || !stray.is_empty() {
                print!("\n{}", crate::cmd::pool::table(&pools, &stray));
            }
        }
    }
    Ok(())
}

/// Every VM `status` shows: known ones (a runner or a config entry) and those with a record.
pub fn all_vms(tree: &Tree, cfg: &Config) -> Vec<VmName> {
    let mut v = crate::model::runner::known_vms(tree, cfg);
    v.extend(record::recorded_vms(tree));
    v.sort();
    v.dedup();
    v
}

/// One share in `microvm-link status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareStatus {
    pub tag: String,
    pub source: String,
    pub path: String,
    /// What it was at the VM's last start (from the runtime record), if recorded.
    pub kind: Option<Kind>,
    pub at_start: Option<Ident>,
    pub now: Option<Ident>,
    /// A live root: it follows every link change, so it is never stale.
    pub live: bool,
    /// Recorded at start, pinned, and resolving to something else now.
    pub stale: bool,
    /// What it showed at start, in words (`placeholder`, `repo /home/alice/x`, `directory`);
    /// `None` when not recorded (or recorded before words were).
    pub showed_at_start: Option<String>,
    /// What it shows now, in words (`missing` too).
    pub shows_now: String,
    /// Why it is stale, in one line ("started on the placeholder; alice's repo is linked now").
    pub stale_because: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Ident {
    pub device: u64,
    pub inode: u64,
}

/// One VM in `microvm-link status`.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub vm: VmName,
    /// `microvm@<vm>` active; `null` when systemd cannot be asked (re-rooted, no systemd).
    pub running: Option<bool>,
    pub workspace: EntryView,
    pub shares: Vec<ShareStatus>,
    pub stale: bool,
    /// How the guest sees linked repos (docs/security.md#idmap).
    pub guest: GuestView,
}

/// `vms.<vm>.guestUid` / `idmap`, as status reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestView {
    /// Link mounts are idmapped: guest `uid` is the linker, no other id maps.
    pub idmap: bool,
    /// The guest user that is the linker (`null` when unmapped).
    pub uid: Option<u32>,
    /// What the guest sees of git: `private`, `readonly` or `shared`.
    pub git: GitMode,
}

impl GuestView {
    pub fn of(s: Seen) -> GuestView {
        let (idmap, uid) = match s.ids {
            Guest::Mapped { uid, .. } => (true, Some(uid)),
            Guest::Plain => (false, None),
        };
        GuestView {
            idmap,
            uid,
            git: s.git,
        }
    }

    /// For the table: `uid 1000, git private` or `unmapped, git shared`.
    pub fn words(&self) -> String {
        let ids = match self.uid {
            Some(u) if self.idmap => format!("uid {u}"),
            _ => "unmapped".into(),
        };
        format!("{ids}, git {}", self.git.as_str())
    }

    /// What a person must know of this guest, if anything (one line each).
    pub fn warnings(&self, vm: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.idmap {
            out.push(format!("{vm}: guest ids unmapped (idmap = false): the guest's root is root on linked repos"));
        }
        if self.git == GitMode::Shared {
            out.push(format!("{vm}: git = shared: the guest can make your git run commands (it writes .git/config and hooks)"));
        }
        out
    }
}

/// How `vm`'s guest sees linked repos: its config, else the default.
pub fn seen_by(cfg: &Config, vm: &VmName) -> Seen {
    cfg.vm(vm).map(|v| v.seen()).unwrap_or_default()
}

/// The status of `vm`: its workspace entry, and each share at start vs now.
pub fn status_of(tree: &Tree, cfg: &Config, root: &Root, vm: &VmName) -> anyhow::Result<VmStatus> {
    status_with(tree, cfg, vm, Running::ask(root, &[vm.as_str()]).of(vm))
}

/// [`status_of`], with whether it runs already asked (see [`Running`]).
pub fn status_with(
    tree: &Tree,
    cfg: &Config,
    vm: &VmName,
    running: Option<bool>,
) -> anyhow::Result<VmStatus> {
    let mut workspace = match Workspace::find(tree, cfg)? {
        Some(ws) => ws.view(vm)?,
        None => EntryView {
            state: State::Missing,
            target: None,
        },
    };
    // One unreadable record must not take status (or a link's stale list) down with it.
    let record = record::read(tree, vm).unwrap_or_else(|e| {
        tracing::warn!(
            vm = vm.as_str(),
            "ignoring it: {}",
            crate::host::logging::one_line(&e)
        );
        None
    });
    let mut shares: Vec<ShareStatus> = Vec::new();
    let current = crate::model::runner::shares(tree, cfg, vm).unwrap_or_else(|e| {
        tracing::warn!(
            vm = vm.as_str(),
            "not showing its shares: {}",
            crate::host::logging::one_line(&e)
        );
        Vec::new()
    });
    let recorded = record
        .as_ref()
        .map(|r| r.shares.clone())
        .unwrap_or_default();
    for s in &current {
        let path = s.path.to_string_lossy().into_owned();
        let rec = recorded.iter().find(|r| r.tag == s.tag);
        shares.push(share_status(
            tree,
            cfg,
            s.tag.clone(),
            s.source.clone(),
            path,
            rec,
        ));
    }
    // Tags recorded at start but gone from the runner since (a rebuilt VM not restarted).
    for r in recorded
        .iter()
        .filter(|r| !current.iter().any(|s| s.tag == r.tag))
    {
        shares.push(share_status(
            tree,
            cfg,
            r.tag.clone(),
            r.source.clone(),
            r.path.clone(),
            Some(r),
        ));
    }
    // A VM that shares nothing through `<workspaceDir>/<vm>` (it mounts another VM's, say)
    // has no workspace of its own: "none", not "missing", which would read as a fault.
    let own = cfg.workspace_dir.join(vm);
    if workspace.state == State::Missing
        && workspace.target.is_none()
        && !current.iter().any(|s| s.path.starts_with(&own))
    {
        workspace.state = State::None;
    }
    let stale = shares.iter().any(|s| s.stale);
    Ok(VmStatus {
        vm: vm.clone(),
        running,
        workspace,
        shares,
        stale,
        guest: GuestView::of(seen_by(cfg, vm)),
    })
}

/// The staleness rule of one share: its source no longer resolves to what it did at the
/// start (`now`: its identity now, `None` when missing). A live share never is (its live root
/// is what virtiofsd holds), nor a fallback placeholder, which is what the VM gets until the
/// repo can serve the source: a restart would give the same (status says it in words).
fn is_stale(cfg: &Config, path: &Path, rec: Option<&ShareRecord>, now: Option<&Ident>) -> bool {
    let Some(r) = rec else { return false };
    let live = matches!(live_of(&cfg.workspace_dir, path), Some(Ok(_)));
    let at_start = Ident {
        device: r.device,
        inode: r.inode,
    };
    !live && r.kind != Kind::Fallback && Some(&at_start) != now
}

/// Whether `vm`, whose shares are `current` now, is stale, by [`status_with`]'s rule but
/// without its words: the record and one walk per share. microvm-link asks it of every
/// recorded VM, and builds the whole status only for those that are.
pub fn is_stale_vm(
    tree: &Tree,
    cfg: &Config,
    records: &record::RuntimeDir,
    vm: &VmName,
    current: &[Share],
) -> bool {
    let Ok(Some(record)) = records.read(tree, vm) else {
        return false;
    };
    let now = |path: &Path| match tree.walk(path, Trust::All) {
        Ok(Walk::Found(n)) if n.is_dir() => {
            let (device, inode) = n.id();
            Some(Ident { device, inode })
        }
        _ => None,
    };
    let of_runner = current.iter().map(|s| {
        let rec = record.shares.iter().find(|r| r.tag == s.tag);
        (s.path.clone(), rec)
    });
    let gone = record
        .shares
        .iter()
        .filter(|r| !current.iter().any(|s| s.tag == r.tag))
        .map(|r| (std::path::PathBuf::from(&r.path), Some(r)));
    of_runner
        .chain(gone)
        .any(|(path, rec)| rec.is_some() && is_stale(cfg, &path, rec, now(&path).as_ref()))
}

fn share_status(
    tree: &Tree,
    cfg: &Config,
    tag: String,
    source: String,
    path: String,
    rec: Option<&ShareRecord>,
) -> ShareStatus {
    let (shows_now, now) = shows::now(tree, cfg, Path::new(&path));
    let now = now.map(|(device, inode)| Ident { device, inode });
    let at_start = rec.map(|r| Ident {
        device: r.device,
        inode: r.inode,
    });
    let live = matches!(live_of(&cfg.workspace_dir, Path::new(&path)), Some(Ok(_)));
    let stale = is_stale(cfg, Path::new(&path), rec, now.as_ref());
    // A record from before words: its kind still tells a placeholder.
    let showed = rec.and_then(|r| match &r.shows {
        Some(s) => Some(s.clone()),
        None => (r.kind == Kind::Placeholder).then_some(Shows::Placeholder),
    });
    ShareStatus {
        tag,
        source,
        path,
        kind: rec.map(|r| r.kind),
        live,
        stale,
        at_start,
        now,
        showed_at_start: showed.as_ref().map(Shows::words),
        stale_because: stale.then(|| record::why_stale(showed.as_ref(), &shows_now)),
        shows_now: shows_now.words(),
    }
}

/// The status table for people: one row per share, the VM's columns on its first row; what
/// each share showed at start and shows now in words, STALE with the reason. `verbose` adds
/// `device:inode` (always in the JSON).
pub fn table(rows: &[VmStatus], verbose: bool) -> String {
    let shown = |words: Option<&str>, i: &Option<Ident>| {
        let words = words.unwrap_or("-");
        match i {
            Some(i) if verbose => format!("{words} ({}:{})", i.device, i.inode),
            _ => words.to_string(),
        }
    };
    let mut table = vec![[
        "VM",
        "RUNNING",
        "GUEST",
        "WORKSPACE",
        "SHARE",
        "SOURCE",
        "AT START",
        "NOW",
        "",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let running = match r.running {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let state = r.workspace.state;
        let ws = match (&r.workspace.target, state) {
            (Some(t), State::Dangling) => format!("dangling (was {t})"),
            (Some(t), State::Linked | State::Legacy) => format!("{} -> {t}", state.as_str()),
            (_, s) => s.as_str().to_string(),
        };
        if r.shares.is_empty() {
            table.push(vec![
                r.vm.to_string(),
                running.into(),
                r.guest.words(),
                ws.clone(),
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for (i, s) in r.shares.iter().enumerate() {
            let first = i == 0;
            table.push(vec![
                if first {
                    r.vm.to_string()
                } else {
                    String::new()
                },
                if first { running.into() } else { String::new() },
                if first {
                    r.guest.words()
                } else {
                    String::new()
                },
                if first { ws.clone() } else { String::new() },
                s.tag.clone(),
                crate::fs::paths::show(std::path::Path::new(&s.source)),
                shown(s.showed_at_start.as_deref(), &s.at_start),
                shown(Some(&s.shows_now), &s.now),
                match &s.stale_because {
                    Some(why) if s.stale => format!("STALE: {why}"),
                    _ if s.stale => "STALE".into(),
                    _ if s.live => "live".into(),
                    _ => String::new(),
                },
            ]);
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows {
        for w in r.guest.warnings(&r.vm) {
            out.push_str(&w);
            out.push('\n');
        }
    }
    out
}
