//! Reaching a VM over SSH (docs/reference/cli.md#ssh): where a destination really goes (as the
//! invoking user's ssh resolves it), waiting until it answers with an SSH banner, and the
//! remote command that starts a shell in the guest directory matching the working one.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::caller::{Caller, Ids};
use crate::model::names::SshDest;

/// Where a destination leads, as `ssh -G` says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    pub destination: SshDest,
    pub host: String,
    pub port: u16,
    /// Reached through a ProxyCommand or ProxyJump: the banner cannot be probed directly.
    pub proxied: bool,
    /// The user's ssh configuration shares connections itself (`ControlMaster` or
    /// `ControlPath` set for this destination): theirs is left as it is.
    #[serde(skip)]
    pub own_control: bool,
}

/// A VM's SSH destination, and whether someone chose it (`--ssh`, `vms.<vm>.ssh`) or it is
/// the NixOS module's guess (`vms.<vm>.sshDefault`), which never fails a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: SshDest,
    pub chosen: bool,
}

/// The user to run ssh as, for root acting for `caller`; `None` for root itself or when
/// running as that user already.
pub fn as_user(caller: Caller) -> Option<Ids> {
    match caller {
        Caller::User(uid) if nix::unistd::Uid::effective().as_raw() != uid => Some(Ids::of(uid)),
        _ => None,
    }
}

/// An `ssh` command run as `user` (root acting for someone runs ssh as them, never as root:
/// their `~/.ssh/config`, keys and known hosts apply). std drops the supplementary groups.
pub fn command(user: Option<&Ids>) -> std::process::Command {
    let mut c = std::process::Command::new(ssh_program());
    if let Some(ids) = user {
        c.uid(ids.uid).gid(ids.gid);
        if let (Some(name), Some(home)) = (&ids.name, &ids.home) {
            c.env("HOME", home).env("USER", name).env("LOGNAME", name);
        }
    }
    c
}

fn ssh_program() -> &'static str {
    option_env!("MICROVM_WORKSPACES_SSH").unwrap_or("ssh")
}

/// Resolves `destination` with `ssh -G` as `user`: host, port, and whether a proxy is used.
pub fn resolve(destination: &SshDest, user: Option<&Ids>) -> Result<Target> {
    let out = command(user)
        .args(["-G", "--", destination])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} -G", ssh_program()))?;
    if !out.status.success() {
        bail!(
            "ssh -G {destination} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_g(destination, &String::from_utf8_lossy(&out.stdout))
}

/// The `hostname`, `port`, `proxycommand` and `proxyjump` lines of `ssh -G` output.
pub fn parse_g(destination: &SshDest, text: &str) -> Result<Target> {
    let (mut host, mut port, mut proxied, mut own_control) = (None, 22u16, false, false);
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "hostname" => host = Some(value.to_string()),
            "port" => {
                port = value
                    .parse()
                    .with_context(|| format!("ssh -G {destination}: port {value:?}"))?
            }
            "proxycommand" | "proxyjump" if value != "none" => proxied = true,
            "controlmaster" if value != "false" => own_control = true,
            "controlpath" if value != "none" => own_control = true,
            _ => {}
        }
    }
    let host = host.with_context(|| format!("ssh -G {destination} printed no hostname"))?;
    Ok(Target {
        destination: destination.clone(),
        host,
        port,
        proxied,
        own_control,
    })
}

/// Waits until `t` answers with an SSH banner (`SSH-`), at most `timeout`; returns how long
/// it took. Each probe connects as `user` (see [`probe_as`]). Progress on stderr when
/// `progress`.
/// With `give_up_unresolved`, a host name that does not resolve ends the wait at once
/// (the error is then an [`Unresolved`]).
pub fn wait_for_banner(
    t: &Target,
    user: Option<&Ids>,
    timeout: Duration,
    progress: bool,
    give_up_unresolved: bool,
) -> Result<Duration> {
    let start = Instant::now();
    let exe = std::env::current_exe().context("cannot find microvm-link's own executable")?;
    loop {
        let last = match probe_as(&exe, t, user) {
            Ok(()) => {
                if progress {
                    eprintln!();
                }
                return Ok(start.elapsed());
            }
            Err(e) if give_up_unresolved && e.is::<Unresolved>() => return Err(e),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            if progress {
                eprintln!();
            }
            bail!(
                "{} ({}:{}) gave no SSH banner within {} s (last: {last})",
                t.destination,
                t.host,
                t.port,
                timeout.as_secs()
            );
        }
        if progress {
            eprint!(
                "\r  waiting for ssh {} ({}:{}), {:.0} s   ",
                t.destination,
                t.host,
                t.port,
                start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How long one probe may take.
pub const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// One probe, connecting as `user`: root acting for someone connects nowhere itself (an
/// owner-based firewall rule, or what a port answers, is the caller's business), so the
/// probe runs in a child with the caller's ids (`microvm-link __probe-ssh HOST PORT`).
///
/// The child is the caller's (they may stop it or make it talk): it gets `PROBE_LIMIT` and a
/// second, then it is killed; of what it says, one line of at most 512 bytes is kept, its
/// control characters escaped. Exit status 2 means its host name did not resolve.
fn probe_as(exe: &Path, t: &Target, user: Option<&Ids>) -> Result<()> {
    use std::process::Stdio;
    let Some(ids) = user else {
        return probe(&t.host, t.port, PROBE_LIMIT);
    };
    let mut child = std::process::Command::new(exe)
        .args(["__probe-ssh", "--", &t.host, &t.port.to_string()])
        .uid(ids.uid)
        .gid(ids.gid)
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run the SSH probe as the caller")?;
    let deadline = Instant::now() + PROBE_LIMIT + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut said = Vec::new();
    if let Some(err) = child.stderr.take() {
        let _ = err.take(512).read_to_end(&mut said);
    }
    let said = crate::host::logging::one_line(&anyhow::anyhow!(
        "{}",
        String::from_utf8_lossy(&said)
            .trim()
            .trim_start_matches("microvm-link: ")
    ));
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) if s.code() == Some(UNRESOLVED_EXIT) => Err(Unresolved(said).into()),
        Some(_) => bail!("{said}"),
        None => bail!(
            "the probe did not finish in {} s",
            PROBE_LIMIT.as_secs() + 1
        ),
    }
}

/// `microvm-link __probe-ssh HOST PORT`: one probe, run as the caller by [`probe_as`]; exit 0
/// on a banner, [`UNRESOLVED_EXIT`] when the name does not resolve, 1 otherwise, with one
/// line on stderr. Refused through sudo: root connects nowhere for a caller.
pub fn probe_command(host: &str, port: u16) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    anyhow::ensure!(
        !nix::unistd::Uid::effective().is_root() || crate::fs::paths::sudo_uid().is_none(),
        "__probe-ssh is internal and refused through sudo"
    );
    Ok(match probe(host, port, PROBE_LIMIT) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("microvm-link: {}", crate::host::logging::one_line(&e));
            match e.is::<Unresolved>() {
                true => ExitCode::from(UNRESOLVED_EXIT as u8),
                false => ExitCode::FAILURE,
            }
        }
    })
}

/// `__probe-ssh`'s exit status when the host name does not resolve.
pub const UNRESOLVED_EXIT: i32 = 2;

/// A host name that does not resolve (a wait may give up at once on it).
#[derive(Debug)]
pub struct Unresolved(pub String);

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unresolved {}

/// One attempt: connect and read the first bytes. (A hypervisor's port forward accepts
/// before the guest listens, so a connection alone proves nothing.)
pub fn probe(host: &str, port: u16, limit: Duration) -> Result<()> {
    let addr = address(host, port)?;
    let mut s = TcpStream::connect_timeout(&addr, limit).context("connect")?;
    s.set_read_timeout(Some(limit))?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).context("no banner yet")?;
    if &buf != b"SSH-" {
        bail!("{addr} answered, but not with an SSH banner");
    }
    Ok(())
}

/// The first address `host` resolves to; an [`Unresolved`] when it does not.
pub fn address(host: &str, port: u16) -> Result<std::net::SocketAddr> {
    match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(Unresolved(format!("{host} has no address")).into()),
        Err(e) => Err(Unresolved(format!("cannot resolve {host}: {e}")).into()),
    }
}

/// `word` quoted for a POSIX shell: safe whatever it holds.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A remote preamble: wait (polling every 0.1 s, at most `limit`) until the guest's
/// directory `dir` has inode number `ino`, then go on whatever it shows, saying so on stderr
/// when it is not the repo (a guest whose virtiofs numbers inodes its own way would
/// otherwise never run anything). The guest's virtiofs
/// keeps a looked-up entry for its cache time (a second with `--cache=auto`), so a live view
/// switched on the host a moment ago can still show the previous directory there.
pub fn await_inode(dir: &str, ino: u64, limit: std::time::Duration) -> String {
    let tries = (limit.as_millis() / 100).max(1);
    format!(
        "n=0; while [ \"$(stat -c %i {q}/. 2>/dev/null)\" != {ino} ] && [ $n -lt {tries} ]; do sleep 0.1; n=$((n+1)); done; [ \"$(stat -c %i {q}/. 2>/dev/null)\" = {ino} ] || echo 'microvm-link: the live view does not show the repo after {secs} s; going on' >&2; ",
        q = shell_quote(dir),
        secs = limit.as_secs_f64()
    )
}

/// The remote command: into `dir` (if known), then `command` (each word quoted) or a login
/// shell.
pub fn remote_command(dir: Option<&str>, command: &[String]) -> String {
    let cd = dir.map(|d| format!("cd {} && ", shell_quote(d)));
    let run = if command.is_empty() {
        "exec \"${SHELL:-/bin/sh}\" -l".to_string()
    } else {
        let words: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
        format!("exec {}", words.join(" "))
    };
    format!("{}{run}", cd.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm1() -> SshDest {
        SshDest::try_from("vm1").unwrap()
    }

    #[test]
    fn the_view_wait_polls_the_quoted_directory_and_gives_up() {
        assert_eq!(
            await_inode("/run/it's/current", 42, std::time::Duration::from_secs(3)),
            r#"n=0; while [ "$(stat -c %i '/run/it'\''s/current'/. 2>/dev/null)" != 42 ] && [ $n -lt 30 ]; do sleep 0.1; n=$((n+1)); done; [ "$(stat -c %i '/run/it'\''s/current'/. 2>/dev/null)" = 42 ] || echo 'microvm-link: the live view does not show the repo after 3 s; going on' >&2; "#
        );
    }

    #[test]
    fn ssh_g_output_gives_host_port_and_proxy() {
        let t = parse_g(
            &vm1(),
            "user alice\nhostname 127.0.0.1\nport 2201\nproxycommand none\n",
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.proxied),
            ("127.0.0.1", 2201, false)
        );
        let t = parse_g(&vm1(), "hostname h\nproxyjump bastion\n").unwrap();
        assert_eq!((t.port, t.proxied), (22, true));
        // ssh's defaults: no connection sharing of the user's own.
        let t = parse_g(
            &vm1(),
            "hostname h\ncontrolmaster false\ncontrolpath none\n",
        )
        .unwrap();
        assert!(!t.own_control);
        for own in [
            "controlmaster auto\ncontrolpath none",
            "controlmaster false\ncontrolpath ~/.ssh/cm-%C",
        ] {
            let t = parse_g(&vm1(), &format!("hostname h\n{own}\n")).unwrap();
            assert!(t.own_control, "{own}");
        }
        assert!(parse_g(&vm1(), "port 22\n").is_err());
        assert!(parse_g(&vm1(), "hostname h\nport many\n").is_err());
    }

    #[test]
    fn remote_commands_quote_every_word() {
        assert_eq!(
            remote_command(
                Some("/work/it's"),
                &["echo".into(), "a b".into(), "$HOME".into()]
            ),
            r#"cd '/work/it'\''s' && exec 'echo' 'a b' '$HOME'"#
        );
        assert_eq!(remote_command(None, &[]), r#"exec "${SHELL:-/bin/sh}" -l"#);
        // What the quoting means to a real shell.
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &remote_command(
                    Some("/"),
                    &[
                        "printf".into(),
                        "%s|".into(),
                        "a 'b' $X".into(),
                        "pwd".into(),
                    ],
                ),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a 'b' $X|pwd|");
    }
}
