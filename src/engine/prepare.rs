//! Prepare: make every share source of one VM exist (docs/design.md#prepare).
//!
//! Observe -> plan -> apply. Every source is resolved and every entry it passes through is
//! observed and planned (engine::plan) before anything changes, so a failing run touches
//! nothing; in the common case, where every source exists, the plan is empty and that is
//! all. Otherwise the plan is made again holding the workspace lock (what is there now) and
//! applied (engine::apply), parents before children. `--dry-run` prints the plan.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::engine::apply::{apply, Applied, Log};
use crate::engine::entry::Workspace;
use crate::engine::facts::EntryFacts;
use crate::engine::observe::{self, Held, WantOf};
use crate::engine::plan::{self, Creation, Creator, Intent, LivePlan, Made, Op};
use crate::engine::sealed::{self, Sealing};
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::dirs;
use crate::fs::idmap;
use crate::fs::paths::{self, show, LIVE_CURRENT};
use crate::fs::placeholder;
use crate::model::action::Action;
use crate::model::config::{Config, Proto};
use crate::model::record::{Kind, Prepared, Shows};
use crate::model::runner::{self, Share};
use crate::model::workspace::{entry_of, live_of};

/// A share the linked repo could not serve, and where its placeholder goes: on `dir` (the
/// deepest directory of the path that is one, inside the entry), a tmpfs holding `rest`.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub share: Share,
    pub dir: PathBuf,
    pub dir_id: (u64, u64),
    pub rest: Vec<OsString>,
    /// Why, in one line (the error that would have failed the start).
    pub why: String,
}

/// A share's source as the plan leaves it.
enum Source {
    /// It exists and nothing in the plan changes it.
    Found(Prepared),
    /// The plan makes it (`made`) or puts the live root it names in step (`live`).
    Planned {
        made: Option<Made>,
        live: bool,
    },
    Fallback(Prepared),
}

/// One VM's plan: its operations (by share tag, for the journal), what each source will be,
/// and the directories held for the applier.
struct VmPlan {
    steps: Vec<(String, Vec<Op>)>,
    /// Live roots of the entries (other VMs' shares) put in step after every step: one that
    /// fails is left as it is with a warning, and fails no start.
    lenient: Vec<LivePlan>,
    warnings: Vec<String>,
    /// Sources whose last component is a symlink (tag, path): warned about once, by the
    /// pass that is the last.
    symlinked: Vec<(String, PathBuf)>,
    /// Each share, what the plan makes of its source, and the link its entry shows then.
    sources: Vec<(Share, Source, Option<Linked>)>,
    fallbacks: Vec<Fallback>,
    held: Held,
}

impl VmPlan {
    /// Every operation, in the order they are applied.
    fn ops(&self) -> impl Iterator<Item = &Op> {
        self.steps
            .iter()
            .flat_map(|(_, ops)| ops)
            .chain(self.lenient.iter().flat_map(|l| &l.ops))
    }
}

/// A link an entry shows: the record's target as shown, and who linked it.
#[derive(Clone)]
struct Linked {
    target: String,
    owner: u32,
}

/// What an entry a share passes through is planned to show.
struct Planned {
    /// The repo it shows once the plan is done (paths below the entry are looked at, and
    /// made, in the repo).
    shows: Option<PathBuf>,
    /// Then: the link it shows.
    linked: Option<Linked>,
    /// Taken as linked as microvm-link is about to (see [`Assume`]), not planned.
    assumed: bool,
    facts: Option<EntryFacts>,
}

/// What earlier VMs' plans of one microvm-link run create, so that a later VM's plan does
/// not plan it again: the act ensures the VMs one after another, and the second finds what
/// the first made.
#[derive(Debug, Default)]
pub struct Carry(std::collections::BTreeMap<PathBuf, Creator>);

/// An entry taken as linked to a repo (`None`: unlinked) whatever its record says:
/// microvm-link's check, before it relinks, that every source it will then ensure can be made.
pub type Assume = (String, Option<PathBuf>);

/// Observes and plans every share of `vm` (see the module's comment).
fn plan_vm(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    fall_back: bool,
    assume: &[Assume],
    carry: &mut Carry,
) -> Result<VmPlan> {
    let ws = Workspace::find(tree, cfg)?;
    let spec = cfg.placeholder_spec()?;
    let mut creation = Creation::new(&cfg.workspace_dir, spec);
    creation.seed(&carry.0);
    let mut plan = VmPlan {
        steps: Vec::new(),
        lenient: Vec::new(),
        warnings: Vec::new(),
        symlinked: Vec::new(),
        sources: Vec::new(),
        fallbacks: Vec::new(),
        held: Held::default(),
    };
    if ws.is_none() {
        creation.planned(&cfg.workspace_dir, Creator::Root);
    }
    // Made before the first source that needs it, if missing.
    let mut ws_dir_needed = ws.is_none();
    let mut entries: BTreeMap<OsString, Planned> = BTreeMap::new();
    for share in shares {
        let label = || share_label(vm, share);
        let mut ops = Vec::new();
        if ws_dir_needed && share.path.starts_with(&cfg.workspace_dir) {
            ops.push(Op::RootDir {
                path: cfg.workspace_dir.clone(),
                what: "",
            });
            ws_dir_needed = false;
        }
        let live = live_of(&cfg.workspace_dir, &share.path)
            .transpose()
            .with_context(label)?;
        let name = match &live {
            Some((n, _)) => Some(n.clone()),
            None => entry_of(&cfg.workspace_dir, &share.path).map(OsStr::to_os_string),
        };
        if let Some(name) = &name {
            if !entries.contains_key(name) {
                let planned = plan_entry(
                    ws.as_ref(),
                    cfg,
                    name,
                    assume,
                    &mut creation,
                    &mut plan,
                    &mut ops,
                )
                .with_context(label)?;
                entries.insert(name.clone(), planned);
            }
        }
        let source = match (&live, &ws) {
            (Some((name, rel)), Some(ws)) => {
                let e = &entries[name];
                let facts = e.facts.as_ref().context("an entry observed")?;
                let known = facts.live.iter().any(|l| l.rel == *rel);
                let l = ws
                    .observe_live_root(name, rel, facts, &mut plan.held)
                    .with_context(label)?;
                let want = e.shows.is_some().then_some(&facts.want);
                // This VM's own live root is strict: its start fails if it cannot be made.
                let root_ops = plan::live_root(facts, &l, want).with_context(label)?;
                if known {
                    plan.lenient.retain(|lp| lp.root != l.root);
                }
                // Taken as linked (microvm-link's check and dry run): its relink puts an
                // existing live root in step, not this plan.
                let puts_in_step = !(known && e.assumed);
                if puts_in_step && !root_ops.is_empty() {
                    ops.extend(root_ops);
                    Source::Planned {
                        made: None,
                        live: true,
                    }
                } else {
                    resolve(
                        tree,
                        &mut creation,
                        share,
                        &share.path,
                        true,
                        &mut plan,
                        &mut ops,
                    )
                    .with_context(label)?
                }
            }
            (Some((name, rel)), None) => {
                let root = cfg.workspace_dir.join(paths::LIVE).join(name).join(rel);
                let mut dir = cfg.workspace_dir.clone();
                for c in root
                    .strip_prefix(&cfg.workspace_dir)
                    .unwrap_or(Path::new(""))
                {
                    dir.push(c);
                    ops.push(Op::RootDir {
                        path: dir.clone(),
                        what: "live root, ",
                    });
                }
                ops.push(Op::Placeholder {
                    path: root.join(LIVE_CURRENT),
                    spec: plan::LIVE_SPEC,
                    what: "live view",
                });
                Source::Planned {
                    made: None,
                    live: true,
                }
            }
            (None, _) => {
                let e = name.as_ref().and_then(|n| entries.get(n));
                let path = match e {
                    // Below an entry that shows (or is planned to show) a repo: looked at, and
                    // made, in the repo itself, not through the entry's idmapped mount.
                    Some(Planned {
                        shows: Some(repo), ..
                    }) => {
                        let entry = cfg.workspace_dir.join(name.as_ref().context("an entry")?);
                        repo.join(share.path.strip_prefix(&entry).unwrap_or(Path::new("")))
                    }
                    _ => share.path.clone(),
                };
                let linked = match (&ws, &name, fall_back && share.proto == Proto::Virtiofs) {
                    (Some(ws), Some(n), true) => ws.shows_repo(n),
                    _ => None,
                };
                match resolve(
                    tree,
                    &mut creation,
                    share,
                    &path,
                    false,
                    &mut plan,
                    &mut ops,
                ) {
                    Err(e) if linked.is_some() => {
                        let owner = linked.map_or(0, |r| r.owner);
                        fallback(tree, cfg, vm, share, owner, &e, &mut plan.fallbacks)?
                    }
                    r => r.with_context(label)?,
                }
            }
        };
        let linked = name
            .as_ref()
            .and_then(|n| entries.get(n))
            .and_then(|e| e.linked.clone());
        plan.steps.push((share.tag.clone(), ops));
        plan.sources.push((share.clone(), source, linked));
    }
    // The lock lives in the workspace dir: a run that changes anything makes it first.
    if ws_dir_needed && plan.ops().next().is_some() {
        plan.steps.insert(
            0,
            (
                String::new(),
                vec![Op::RootDir {
                    path: cfg.workspace_dir.clone(),
                    what: "",
                }],
            ),
        );
    }
    carry.0 = creation.planned_paths().clone();
    Ok(plan)
}

/// Observes and plans entry `name` once per run (or takes it as `assume` says).
fn plan_entry(
    ws: Option<&Workspace>,
    cfg: &Config,
    name: &OsStr,
    assume: &[Assume],
    creation: &mut Creation,
    plan: &mut VmPlan,
    ops: &mut Vec<Op>,
) -> Result<Planned> {
    let at = cfg.workspace_dir.join(name);
    if let Some((_, target)) = assume.iter().find(|(n, _)| OsStr::new(n) == name) {
        let Some(ws) = ws else {
            if target.is_none() {
                creation.planned(&at, Creator::Placeholders);
            }
            return Ok(Planned {
                shows: target.clone(),
                linked: None,
                assumed: true,
                facts: None,
            });
        };
        let repo = match target {
            Some(t) => match ws.tree.walk(t, Trust::Owners)? {
                Walk::Found(n) if n.is_dir() => Some(n),
                _ => bail!("{} is not a directory", show(t)),
            },
            None => {
                creation.planned(&at, Creator::Placeholders);
                None
            }
        };
        let want = match &repo {
            Some(r) => WantOf::Repo(r),
            None => WantOf::Nothing,
        };
        let facts = ws.observe_entry(name, want, &mut plan.held)?;
        return Ok(Planned {
            shows: target.clone(),
            linked: None,
            assumed: true,
            facts: Some(facts),
        });
    }
    let Some(ws) = ws else {
        return Ok(Planned {
            shows: None,
            linked: None,
            assumed: false,
            facts: None,
        });
    };
    let facts = ws.observe_entry(name, WantOf::Recorded, &mut plan.held)?;
    let p = plan::entry(&facts, &Intent::Reconcile)?;
    let mounts = p
        .ops
        .iter()
        .any(|o| matches!(o, Op::Mount { at: a, .. } if *a == at));
    // What is below an entry the plan makes a placeholder, or uncovers (unmounted, nothing
    // mounted again: what lies beneath the mount cannot be looked at now), is planned as
    // placeholders; creating one that is there already finds it.
    if p.ops.iter().any(|o| match o {
        Op::Placeholder { path, .. } => *path == at,
        Op::Migrate { at: a, .. } => *a == at,
        Op::Unmount { at: a, .. } => *a == at && !mounts,
        _ => false,
    }) {
        creation.planned(&at, Creator::Placeholders);
    }
    ops.extend(p.ops);
    plan.lenient.extend(p.live);
    plan.warnings.extend(p.warnings);
    let linked = match (&p.shows, &facts.record) {
        (Some(_), Some(r)) => Some(Linked {
            target: show(&r.target),
            owner: r.owner,
        }),
        _ => None,
    };
    Ok(Planned {
        shows: p.shows,
        linked,
        assumed: false,
        facts: Some(facts),
    })
}

/// The source at `path` as it is (`live`: it is a live root's), or what the plan makes of
/// it where it is missing.
fn resolve(
    tree: &Tree,
    creation: &mut Creation,
    share: &Share,
    path: &Path,
    live: bool,
    plan: &mut VmPlan,
    ops: &mut Vec<Op>,
) -> Result<Source> {
    // Below something this run already plans to create (or to replace by a placeholder),
    // the rest is planned without looking at the disk.
    if let Some((base, creator)) = creation.planned_ancestor(path) {
        let rest: Vec<OsString> = path
            .strip_prefix(&base)
            .unwrap_or(Path::new(""))
            .iter()
            .map(OsStr::to_os_string)
            .collect();
        let made = creation.below(base, creator, &rest)?;
        ops.append(&mut creation.ops);
        return Ok(Source::Planned {
            made: Some(made),
            live,
        });
    }
    let found = match tree.existing_dir_fast(path) {
        Some(n) => Walk::Found(n),
        None => {
            let walk = tree.walk(path, Trust::Owners)?;
            if matches!(&walk, Walk::Found(n) if n.is_dir()) && is_symlink_at(tree, path) {
                plan.symlinked.push((share.tag.clone(), path.to_path_buf()));
            }
            walk
        }
    };
    match found {
        Walk::Found(n) if n.is_dir() => Ok(Source::Found(prepared(share, &n, live, None))),
        Walk::Found(n) => bail!("{} exists but is not a directory", show(&n.path)),
        Walk::Missing { dir, rest } => {
            let m = observe::missing(&dir, rest);
            plan.held.keep(dir);
            let made = creation.missing(path, &m)?;
            ops.append(&mut creation.ops);
            Ok(Source::Planned {
                made: Some(made),
                live,
            })
        }
    }
}

/// What a source resolved to, and what it is.
fn prepared(share: &Share, node: &Node, live: bool, made: Option<Made>) -> Prepared {
    let kind = match made {
        Some(Made::InRepo) => Kind::CreatedInRepo,
        Some(Made::Placeholder) => Kind::Placeholder,
        None if live => Kind::Live,
        None if node.is_placeholder() => Kind::Placeholder,
        None => Kind::Existing,
    };
    Prepared {
        share: share.clone(),
        resolved: node.path.clone(),
        dev: node.st.st_dev,
        ino: node.st.st_ino,
        kind,
        shows: Shows::Directory,
    }
}

/// What a prepared source shows, from what the plan knows (nothing is walked again): a
/// placeholder, the fallback, the repo its entry shows (a live root: what `current` shows),
/// or a directory.
fn with_shows(mut p: Prepared, linked: Option<Linked>) -> Prepared {
    p.shows = match (p.kind, linked) {
        (Kind::Placeholder, _) => Shows::Placeholder,
        (Kind::Fallback, l) => Shows::Fallback {
            owner: l.map_or(0, |l| l.owner),
        },
        (_, Some(l)) => Shows::Repo {
            path: l.target,
            owner: l.owner,
        },
        (Kind::Live, None) => Shows::Placeholder,
        _ => Shows::Directory,
    };
    p
}

/// Is the last component of `path` a symlink? virtiofsd 1.14 refuses such a source
/// (BindMountSharedDir: Invalid argument). Not ours to change, but worth a word before
/// virtiofsd's obscure one. Only on the slow path: the fast one already proved there is no
/// symlink at all.
fn is_symlink_at(tree: &Tree, path: &Path) -> bool {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    match tree.walk(parent, Trust::Owners) {
        Ok(Walk::Found(dir)) => dir
            .child(name)
            .is_ok_and(|n| n.st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK),
        _ => false,
    }
}

/// The journal lines of a pass that is the last.
fn warn(vm: &str, plan: &VmPlan) {
    for w in &plan.warnings {
        tracing::warn!(vm, "{w}");
    }
    for (tag, path) in &plan.symlinked {
        tracing::warn!(vm, tag = %tag, path = %show(path), action = "symlinked-source",
            "share {:?} source {} is a symbolic link, which virtiofsd 1.14 and later refuse; point the share at its target or link it with microvm-link",
            tag, show(path));
    }
}

/// A source below a linked entry that its repo cannot serve: the placeholder to mount for
/// this VM, and a journal line naming the path and the link's owner.
fn fallback(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    share: &Share,
    owner: u32,
    e: &anyhow::Error,
    fallbacks: &mut Vec<Fallback>,
) -> Result<Source> {
    let entry_path = entry_of(&cfg.workspace_dir, &share.path)
        .map(|n| cfg.workspace_dir.join(n))
        .context("not below an entry")?;
    let dir = share
        .path
        .ancestors()
        .take_while(|a| a.starts_with(&entry_path))
        .find_map(|a| match tree.walk(a, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() => Some(n),
            _ => None,
        })
        .with_context(|| format!("{}: nothing of it is a directory", show(&share.path)))?;
    let rest: Vec<OsString> = share
        .path
        .strip_prefix(&dir.path)
        .unwrap_or(Path::new(""))
        .iter()
        .map(OsStr::to_os_string)
        .collect();
    let why = crate::host::logging::one_line(e);
    tracing::warn!(vm, tag = %share.tag, path = %show(&share.path), owner, action = "fallback",
        "share {:?} source {} cannot be served from the repo linked by {}: {}; this VM gets a placeholder there",
        share.tag, show(&share.path), crate::model::config::user_label(owner), why);
    fallbacks.push(Fallback {
        share: share.clone(),
        dir: dir.path.clone(),
        dir_id: dir.id(),
        rest,
        why,
    });
    Ok(Source::Fallback(Prepared {
        share: share.clone(),
        resolved: share.path.clone(),
        dev: 0,
        ino: 0,
        kind: Kind::Fallback,
        shows: Shows::Fallback { owner },
    }))
}

/// The result of preparing one VM.
pub struct Outcome {
    pub prepared: Vec<Prepared>,
    /// Steps taken, or in a dry run the steps it would take (the plan).
    pub actions: Vec<Action>,
    /// Sources served by a placeholder in the VM's namespace ([`serve_fallbacks`]).
    pub fallbacks: Vec<Fallback>,
}

/// Prepares every share of `vm` for its start. With `dry_run`, changes nothing and returns
/// the plan. A source a linked repo cannot serve is a [`Fallback`], not a failed start.
pub fn prepare_vm(tree: &Tree, cfg: &Config, vm: &str, dry_run: bool) -> Result<Outcome> {
    let shares = runner::shares(tree, cfg, vm).with_context(|| format!("VM {vm}"))?;
    prepare(tree, cfg, vm, &shares, dry_run, true)
}

/// Plans the given shares of `vm` as if workspace entries were already linked as `assume`
/// says: microvm-link's check, before it changes anything, that every source it will have
/// to ensure afterwards can be made.
pub fn plan_assuming(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    assume: &[Assume],
    carry: &mut Carry,
) -> Result<Vec<Action>> {
    let plan = plan_vm(tree, cfg, vm, shares, false, assume, carry)?;
    Ok(plan.ops().map(Op::action).collect())
}

/// Prepares the given shares of `vm` (a subset when microvm-link ensures what it changed).
pub fn prepare_shares(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    dry_run: bool,
) -> Result<Outcome> {
    prepare(tree, cfg, vm, shares, dry_run, false)
}

fn prepare(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    dry_run: bool,
    fall_back: bool,
) -> Result<Outcome> {
    let look = plan_vm(tree, cfg, vm, shares, fall_back, &[], &mut Carry::default())?;
    if dry_run || look.ops().next().is_none() {
        if !dry_run {
            warn(vm, &look);
        }
        let mut actions: Vec<Action> = look.ops().map(Op::action).collect();
        let mut planned = Vec::new();
        let mut prepared = Vec::new();
        for (share, s, linked) in look.sources {
            match s {
                Source::Found(p) | Source::Fallback(p) => prepared.push(with_shows(p, linked)),
                // What is there now, which the act sweeps once the plan is done with it.
                Source::Planned { .. } => planned.push(sealed::Served {
                    path: share.path,
                    id: None,
                }),
            }
        }
        let how = match dry_run {
            true => Sealing::DryRun,
            false => Sealing::LockIfNeeded,
        };
        planned.extend(sealed::served(&prepared));
        actions.extend(sealed::seal_served(tree, cfg, vm, &planned, how)?);
        return Ok(Outcome {
            actions,
            prepared,
            fallbacks: look.fallbacks,
        });
    }
    let mut applied = Applied::default();
    let ws = match Workspace::find(tree, cfg)? {
        Some(ws) => ws,
        None => {
            // Made before the lock, which lives in it: the plan's first operation.
            let ws = Workspace::ensure(tree, cfg)?;
            applied.done.push(Op::RootDir {
                path: cfg.workspace_dir.clone(),
                what: "",
            });
            ws
        }
    };
    let _lock = ws.lock()?;
    // Again, under the lock: what is there now is what gets acted on.
    let mut plan = plan_vm(tree, cfg, vm, shares, fall_back, &[], &mut Carry::default())?;
    warn(vm, &plan);
    let steps = std::mem::take(&mut plan.steps);
    for (tag, ops) in &steps {
        let log = Log {
            vm: vm.to_string(),
            tag: tag.clone(),
        };
        apply(&ws, &mut plan.held, ops, &log, &mut applied)
            .with_context(|| format!("VM {vm}, share {tag:?}"))?;
    }
    let log = Log {
        vm: vm.to_string(),
        tag: String::new(),
    };
    for l in std::mem::take(&mut plan.lenient) {
        if let Err(e) = apply(&ws, &mut plan.held, &l.ops, &log, &mut applied) {
            tracing::warn!(vm, path = %show(&l.root), "live root {} left as it is: {}", show(&l.root), crate::host::logging::one_line(&e));
        }
    }
    let mut out = Vec::new();
    for (share, source, linked) in plan.sources {
        out.push(with_shows(
            match source {
                Source::Found(p) | Source::Fallback(p) => p,
                Source::Planned { made, live } => {
                    let node = match tree.walk(&share.path, Trust::Owners)? {
                        Walk::Found(n) if n.is_dir() => n,
                        _ => bail!("{}: not there after preparing it", share_label(vm, &share)),
                    };
                    prepared(&share, &node, live, made)
                }
            },
            linked,
        ));
    }
    let mut actions: Vec<Action> = applied.done.iter().map(Op::action).collect();
    let served = sealed::served(&out);
    actions.extend(sealed::seal_served(
        tree,
        cfg,
        vm,
        &served,
        Sealing::Locked,
    )?);
    Ok(Outcome {
        prepared: out,
        actions,
        fallbacks: plan.fallbacks,
    })
}

/// The `source` of a fallback placeholder's tmpfs, by which [`release_fallbacks`] finds it.
fn fallback_source(vm: &str) -> String {
    format!("microvm-workspaces-fallback:{vm}")
}

/// Mounts each fallback's placeholder: a small tmpfs holding the rest of the path (root 0755
/// directories, the leaf a placeholder) on the deepest directory of it that is one (the same
/// directory, by device and inode, as found before). It goes below a workspace entry, whose
/// mount is private: nothing propagates to another namespace, and the repo's own path never
/// shows it. `microvm-virtiofsd@`'s namespace, made when virtiofsd starts, copies it; its
/// `ExecStartPost=` and `ExecStopPost=` ([`release_fallbacks`]) then take it off the host's.
pub fn serve_fallbacks(tree: &Tree, cfg: &Config, vm: &str, fallbacks: &[Fallback]) -> Result<()> {
    release_fallbacks(vm)?;
    let spec = cfg.placeholder_spec()?;
    for f in fallbacks {
        let what = || format!("placeholder for {}", show(&f.share.path));
        let dir = match tree.walk(&f.dir, Trust::Owners).with_context(what)? {
            Walk::Found(n) if n.is_dir() && n.id() == f.dir_id => n,
            _ => bail!("{}: {} changed meanwhile", what(), show(&f.dir)),
        };
        let source = fallback_source(vm);
        let mnt = idmap::tmpfs(&[("source", &source), ("size", "64k")]).with_context(what)?;
        let mut at = Node::open_at(
            std::os::fd::AsFd::as_fd(&mnt),
            OsStr::new("."),
            f.dir.clone(),
        )?;
        for (i, name) in f.rest.iter().enumerate() {
            at = if i + 1 == f.rest.len() {
                placeholder::create(&at, name, spec)?
            } else {
                dirs::mkdir_as(&at, name, 0, 0)?
            };
        }
        idmap::attach(&mnt, &dir).with_context(what)?;
        crate::fs::failpoint::step("fallback placeholder");
    }
    Ok(())
}

/// Detaches `vm`'s fallback placeholders from this mount namespace (found by their tmpfs
/// source in /proc/self/mountinfo; each checked to be a mount root before it goes).
pub fn release_fallbacks(vm: &str) -> Result<()> {
    let source = fallback_source(vm);
    for m in crate::fs::chase::mounts()?
        .iter()
        .filter(|m| m.source == source)
    {
        if let Ok(f) = std::fs::File::open(&m.at) {
            if crate::fs::chase::is_mount_root(std::os::fd::AsFd::as_fd(&f))? {
                let _ = rustix::mount::unmount(
                    crate::fs::chase::proc_path(std::os::fd::AsFd::as_fd(&f)),
                    rustix::mount::UnmountFlags::DETACH,
                );
                crate::fs::failpoint::step("release fallback");
            }
        }
    }
    Ok(())
}

fn share_label(vm: &str, s: &Share) -> String {
    format!("VM {vm}, share {:?} ({})", s.tag, show(&s.path))
}
