//! Standalone `watcher run` (as root) runs the command as the invoking user: `--user
//! USER[:GROUP]`, or by default the user `sudo` was invoked by (`SUDO_UID`/`SUDO_GID`), with
//! that user's supplementary groups. The environment (HOME included) is left as given: keep
//! the variables a build needs with `sudo -E` / `sudo --preserve-env=...`.
use crate::run_error::RunError;

fn user_err(what: impl Into<String>, why: impl ToString) -> RunError {
    RunError::User { what: what.into(), why: why.to_string() }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// How it was chosen, for the start message.
    pub why: String,
}

fn user_by(spec: &str) -> Result<nix::unistd::User, RunError> {
    let found = match spec.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(spec),
    };
    found
        .map_err(|e| user_err(format!("--user {spec}"), e))?
        .ok_or_else(|| user_err(format!("--user {spec}"), "no such user on this machine"))
}

fn group_by(spec: &str) -> Result<u32, RunError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(spec)
        .map_err(|e| user_err(format!("--user ...:{spec}"), e))?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| user_err(format!("--user ...:{spec}"), "no such group on this machine"))
}

fn supplementary(name: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = std::ffi::CString::new(name) else { return vec![gid] };
    match nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid)) {
        Ok(g) => g.into_iter().map(|g| g.as_raw()).collect(),
        Err(_) => vec![gid],
    }
}

/// The user to run the command as (None: as watcher itself, root). `spec`: `--user`.
/// `sudo_env`: the values of SUDO_UID and SUDO_GID.
pub fn resolve(spec: Option<&str>, sudo_env: (Option<String>, Option<String>)) -> Result<Option<RunAs>, RunError> {
    if let Some(spec) = spec {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if u.is_empty() {
            return Err(user_err(format!("--user {spec:?}"), "give USER or USER:GROUP (names or numbers)"));
        }
        let user = user_by(u)?;
        let gid = match g {
            Some(g) if !g.is_empty() => group_by(g)?,
            _ => user.gid.as_raw(),
        };
        let mut groups = supplementary(&user.name, user.gid.as_raw());
        if !groups.contains(&gid) {
            groups.insert(0, gid);
        }
        return Ok(Some(RunAs { uid: user.uid.as_raw(), gid, groups, why: format!("--user {spec}") }));
    }
    let (Some(uid), gid) = sudo_env else { return Ok(None) };
    let uid: u32 =
        uid.trim().parse().map_err(|_| RunError::SudoId { var: "SUDO_UID", value: uid.clone(), kind: "user" })?;
    if uid == 0 {
        return Ok(None);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    let gid: u32 = match gid {
        Some(g) => {
            g.trim().parse().map_err(|_| RunError::SudoId { var: "SUDO_GID", value: g.clone(), kind: "group" })?
        }
        None => user
            .as_ref()
            .map(|u| u.gid.as_raw())
            .ok_or_else(|| user_err(format!("SUDO_UID={uid}"), "no such user and no SUDO_GID"))?,
    };
    let groups = match &user {
        Some(u) => supplementary(&u.name, gid),
        None => vec![gid],
    };
    Ok(Some(RunAs { uid, gid, groups, why: format!("the sudo caller (SUDO_UID={uid}); --user root keeps root") }))
}

/// `watcher run`'s default `--user` when started through sudo: the invoking user
/// (`SUDO_UID`, `SUDO_GID`), unless that is root. None when not started through sudo.
pub fn sudo_caller() -> Option<String> {
    let uid = std::env::var("SUDO_UID").ok().filter(|u| !u.trim().is_empty() && u.trim() != "0")?;
    Some(match std::env::var("SUDO_GID").ok().filter(|g| !g.trim().is_empty()) {
        Some(g) => format!("{}:{}", uid.trim(), g.trim()),
        None => uid.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_group_and_sudo_caller() {
        let r = resolve(Some("root"), (None, None)).unwrap().unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        let r = resolve(Some("0:1"), (None, None)).unwrap().unwrap();
        assert_eq!((r.uid, r.gid), (0, 1));
        assert!(r.groups.contains(&1));
        assert!(resolve(Some("no-such-user-watcher"), (None, None)).unwrap_err().to_string().contains("no such user"));
        assert!(resolve(Some(":x"), (None, None)).is_err());
        assert_eq!(resolve(None, (None, None)).unwrap(), None);
        assert_eq!(resolve(None, (Some("0".into()), Some("0".into()))).unwrap(), None, "sudo from root stays root");
        let r = resolve(None, (Some("65534".into()), Some("65534".into()))).unwrap().unwrap();
        assert_eq!((r.uid, r.gid), (65534, 65534));
        assert!(resolve(None, (Some("x".into()), None)).is_err());
        // --user wins over the sudo caller
        let r = resolve(Some("0"), (Some("65534".into()), None)).unwrap().unwrap();
        assert_eq!(r.uid, 0);
    }
}
