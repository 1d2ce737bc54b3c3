//! Least privilege.
//!
//! What the probe needs from the kernel, checked on Linux 6.x:
//!
//! - **CAP_NET_RAW**: AF_PACKET sockets (the capture rings) and raw IPPROTO_GRE sockets (the
//!   tunnels). Kept for the whole run, because a ring is opened again whenever its interface
//!   disappears and comes back (a VM restarting recreates its tap), and a new flow needs new
//!   sockets.
//! - Promiscuous mode needs nothing more: it is a membership of the packet socket
//!   (`PACKET_MR_PROMISC`), which the kernel grants to any socket the process could open, and
//!   takes back when the socket closes. CAP_NET_ADMIN is **not** needed; when the file
//!   capabilities or root give it, it is dropped with everything else.
//!
//! So after start the probe holds exactly CAP_NET_RAW in its effective and permitted sets and
//! nothing in its inheritable and ambient sets; with CAP_SETPCAP (root) the bounding set is cut
//! to CAP_NET_RAW too, and `no_new_privs` is set so nothing it could execute gains more. Started
//! as root with `--user NAME`, it switches to that user's uid, gid and no supplementary groups,
//! keeping CAP_NET_RAW across the switch (`PR_SET_KEEPCAPS`).

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

/// What [`drop_privileges`] left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub uid: u32,
    pub gid: u32,
    pub effective: Vec<String>,
    /// Capabilities that were there and are gone.
    pub dropped: Vec<String>,
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string().to_lowercase()).collect();
    v.sort();
    v
}

/// The account `--user` (or `[probe] user`) names; checked at start too, so that a typo is a
/// usage error.
pub fn lookup_user(name: &str) -> Result<User, String> {
    User::from_name(name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no such user".to_string())
}

/// Reduces the process to CAP_NET_RAW, switching to `user` first when given.
pub fn drop_privileges(user: Option<&str>) -> Result<Kept, String> {
    let keep: CapsHashSet = [Capability::CAP_NET_RAW].into_iter().collect();
    let permitted_before =
        caps::read(None, CapSet::Permitted).map_err(|e| format!("read capabilities: {e}"))?;
    if !permitted_before.contains(&Capability::CAP_NET_RAW) {
        return Err(
            "CAP_NET_RAW is needed (run as root, or give the binary file capabilities: setcap cap_net_raw+ep tapwire-probe)"
                .into(),
        );
    }
    let user = user
        .map(|name| lookup_user(name).map_err(|e| format!("--user {name}: {e}")))
        .transpose()?;
    if user.is_some() && !Uid::effective().is_root() {
        return Err("--user needs the probe to be started as root".into());
    }
    // The bounding set can only shrink, and only with CAP_SETPCAP.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::read(None, CapSet::Bounding).unwrap_or_default() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
            }
        }
    }
    if let Some(u) = &user {
        nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(u.gid).map_err(|e| format!("setgid {}: {e}", u.gid))?;
        nix::unistd::setuid(u.uid).map_err(|e| format!("setuid {}: {e}", u.uid))?;
        nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    }
    // Effective first: it must stay within the permitted set at every step.
    caps::set(None, CapSet::Effective, &keep).map_err(|e| format!("set effective: {e}"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| format!("set permitted: {e}"))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| format!("clear inheritable: {e}"))?;
    // Ambient capabilities need kernel 4.3; older kernels have none to clear.
    let _ = caps::clear(None, CapSet::Ambient);
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;

    let effective =
        caps::read(None, CapSet::Effective).map_err(|e| format!("read capabilities: {e}"))?;
    let dropped: CapsHashSet = permitted_before.difference(&effective).copied().collect();
    Ok(Kept {
        uid: Uid::current().as_raw(),
        gid: Gid::current().as_raw(),
        effective: names(&effective),
        dropped: names(&dropped),
    })
}
