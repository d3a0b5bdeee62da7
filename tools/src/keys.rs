//! `shadowmesh keygen` and `shadowmesh ca {init,sign}`: node identities, the network CA and
//! node certificates, as files.
//!
//! Owns the command-line side of key management only (argument parsing, file names, refusal
//! to overwrite); the formats and the cryptography are `shadowmesh_control::{identity,cert}`.
//! Secret files are written 0600 by those modules; nothing here prints or logs a secret.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use shadowmesh_control::cert::{Ca, NodeCertRequest, Prefix};
use shadowmesh_control::identity::Identity;

/// Wall-clock time since the Unix epoch: certificates' validity is wall-clock, unlike the
/// CLI's monotonic clock used for measurements.
#[expect(
    clippy::disallowed_methods,
    reason = "certificate validity windows are wall-clock time"
)]
#[must_use]
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// `shadowmesh ca ...`.
#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Creates a network CA: writes OUT.key (0600) and OUT.pub.
    Init {
        /// CA name (shown in certificates' issuer lines).
        #[arg(long)]
        name: String,
        /// Output path prefix, e.g. `/etc/shadowmesh/ca` → ca.key + ca.pub.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Signs a node's public key into a certificate.
    Sign(SignArgs),
}

/// Arguments of `shadowmesh ca sign`.
#[derive(Args, Debug)]
pub struct SignArgs {
    /// The CA secret key (`ca init`).
    #[arg(long)]
    pub ca: PathBuf,
    /// The node's public key (`keygen`'s .pub).
    #[arg(long)]
    pub node: PathBuf,
    /// Node name (1..=64 bytes).
    #[arg(long)]
    pub name: String,
    /// Overlay address with the overlay network's prefix length, e.g. 100.64.0.1/10 or
    /// fd00::1/64 (repeatable; up to 8 per family). The TUN gets these; the peers' allowed
    /// prefix is the host address (/32, /128).
    #[arg(long = "addr", value_parser = parse_prefix, required = true)]
    pub addrs: Vec<(IpAddr, u8)>,
    /// A subnet routed through this node (repeatable).
    #[arg(long = "subnet", value_parser = parse_prefix)]
    pub subnets: Vec<(IpAddr, u8)>,
    /// A group name (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Validity in days from now.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
    /// Output certificate file.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Parses `ADDRESS/LEN`.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX-LENGTH, e.g. 100.64.0.1/10"))?;
    let a: IpAddr = a
        .parse()
        .map_err(|e| format!("{a:?} is not an IP address: {e}"))?;
    let l: u8 = l
        .parse()
        .map_err(|_| format!("{l:?} is not a prefix length"))?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    if l > max {
        return Err(format!("prefix length {l} is above {max} for {a}"));
    }
    Ok((a, l))
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn refuse_existing(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            bail!(
                "{} exists; not overwriting a key (pass --force to replace it)",
                p.display()
            );
        }
    }
    Ok(())
}

fn make_parent(p: &Path) -> anyhow::Result<()> {
    if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(())
}

/// `shadowmesh keygen --out PREFIX`: writes PREFIX.key (0600) and PREFIX.pub; returns the
/// node id in hex.
///
/// # Errors
/// Existing files (without `force`), I/O, key generation.
pub fn keygen(out: &Path, force: bool) -> anyhow::Result<String> {
    let key = with_ext(out, "key");
    let public = with_ext(out, "pub");
    refuse_existing(&[&key, &public], force)?;
    make_parent(&key)?;
    let id = Identity::generate().context("generating the node identity")?;
    id.save_secret(&key)?;
    id.save_public(&public)?;
    println!(
        "wrote {} (secret, 0600) and {}",
        key.display(),
        public.display()
    );
    Ok(hex(&id.node_id()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn to_prefix((a, l): (IpAddr, u8)) -> Prefix {
    match a {
        IpAddr::V4(v4) => Prefix::V4(v4, l),
        IpAddr::V6(v6) => Prefix::V6(v6, l),
    }
}

/// Runs a `ca` subcommand.
///
/// # Errors
/// Existing files, unreadable keys, fields over their caps.
pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { name, out, force } => {
            let key = with_ext(&out, "key");
            let public = with_ext(&out, "pub");
            refuse_existing(&[&key, &public], force)?;
            make_parent(&key)?;
            let ca = Ca::generate(&name).context("generating the CA key")?;
            ca.save_secret(&key)?;
            ca.public().save(&public)?;
            println!(
                "CA {name:?} (id {}): wrote {} (secret, 0600) and {}",
                hex(&ca.public().id()[..8]),
                key.display(),
                public.display()
            );
            Ok(())
        }
        CaCmd::Sign(a) => {
            refuse_existing(&[&a.out], a.force)?;
            let ca = Ca::load_secret(&a.ca)?;
            let public = Identity::load_public(&a.node)?;
            let now = unix_now().as_secs();
            let req = NodeCertRequest {
                public,
                name: a.name.clone(),
                ipv4: a
                    .addrs
                    .iter()
                    .filter_map(|(ip, l)| match ip {
                        IpAddr::V4(v4) => Some((*v4, *l)),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                ipv6: a
                    .addrs
                    .iter()
                    .filter_map(|(ip, l)| match ip {
                        IpAddr::V6(v6) => Some((*v6, *l)),
                        IpAddr::V4(_) => None,
                    })
                    .collect(),
                subnets: a.subnets.iter().copied().map(to_prefix).collect(),
                groups: a.groups.clone(),
                // A little slack for peers whose clocks run behind.
                not_before: now.saturating_sub(300),
                not_after: now.saturating_add(a.days.saturating_mul(86_400)),
            };
            let cert = ca.sign(req).context("signing the certificate")?;
            make_parent(&a.out)?;
            cert.save(&a.out)?;
            println!(
                "certificate for {:?} (node {}), valid {} days: wrote {}",
                a.name,
                hex(&cert.node_id()[..8]),
                a.days,
                a.out.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_control::cert::{CaPublic, NodeCert};

    #[test]
    fn keygen_ca_and_sign_make_a_verifiable_certificate() {
        let dir = std::env::temp_dir().join(format!("sm-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        keygen(&dir.join("node"), false).unwrap();
        assert!(
            keygen(&dir.join("node"), false).is_err(),
            "no silent overwrite"
        );
        ca(CaCmd::Init {
            name: "net".into(),
            out: dir.join("ca"),
            force: false,
        })
        .unwrap();
        ca(CaCmd::Sign(SignArgs {
            ca: dir.join("ca.key"),
            node: dir.join("node.pub"),
            name: "alpha".into(),
            addrs: vec![
                parse_prefix("100.64.0.1/10").unwrap(),
                parse_prefix("fd00::1/64").unwrap(),
            ],
            subnets: vec![parse_prefix("10.1.0.0/16").unwrap()],
            groups: vec!["ops".into()],
            days: 2,
            out: dir.join("node.cert"),
            force: false,
        }))
        .unwrap();
        let cert = NodeCert::load(&dir.join("node.cert")).unwrap();
        let capub = CaPublic::load(&dir.join("ca.pub")).unwrap();
        let now = unix_now().as_secs();
        cert.verify(&capub, now).unwrap();
        assert!(cert.verify(&capub, now + 3 * 86_400).is_err());
        assert_eq!(cert.allowed_prefixes().len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(parse_prefix("100.64.0.1").is_err());
        assert!(parse_prefix("100.64.0.1/33").is_err());
        assert!(parse_prefix("fd00::1/129").is_err());
        assert!(parse_prefix("x/1").is_err());
        assert_eq!(
            parse_prefix("fd00::1/64").unwrap(),
            ("fd00::1".parse().unwrap(), 64)
        );
    }
}
