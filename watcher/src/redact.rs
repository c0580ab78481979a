//! The one place protected values are taken out of what watcher writes.
//!
//! Every event goes through [`event`] before any sink sees it (the log, the terminal lines,
//! the report model behind every report format and the step summary, the daemon's job logs
//! and its `alert` lines), and free text watcher prints itself (`cannot run ...`) through
//! [`text`]. A value is replaced wherever the payload search would find it: raw, hex, base32,
//! base64 or base64url, whole or a distinctive chunk (see
//! [`SecretSet::redact_values_in_all`]). DNS query names are evidence of the attack and are
//! kept as seen (the `secrets` of a `dns` event say which variable they carry).
use std::borrow::Cow;

use crate::{event::Event, secrets::SecretSet};

/// `s` with every protected value of `sets` replaced (borrowed when there was none).
pub fn text<'a>(sets: &[SecretSet], s: &'a str) -> Cow<'a, str> {
    match SecretSet::redact_values_in_all(sets, s) {
        Some(r) => Cow::Owned(r),
        None => Cow::Borrowed(s),
    }
}

/// Replace `s` in place; true when something was replaced.
fn field(sets: &[SecretSet], s: &mut String) -> bool {
    match SecretSet::redact_values_in_all(sets, s) {
        Some(r) => {
            *s = r;
            true
        }
        None => false,
    }
}

/// Take every protected value out of an event's text fields. An exec whose arguments held
/// one is marked `argv_redacted`.
pub fn event(sets: &[SecretSet], e: &mut Event) {
    if sets.iter().all(SecretSet::is_empty) {
        return;
    }
    match e {
        Event::Start(s) => {
            for a in &mut s.command {
                field(sets, a);
            }
            if let Some(job) = &mut s.job {
                for v in job.variables.values_mut() {
                    field(sets, v);
                }
            }
        }
        Event::Exec(x) => {
            let mut hit = false;
            for a in &mut x.argv {
                hit |= field(sets, a);
            }
            x.argv_redacted |= hit;
            field(sets, &mut x.filename);
            if let Some(cwd) = &mut x.cwd {
                field(sets, cwd);
            }
            for v in x.env.values_mut() {
                field(sets, v);
            }
        }
        Event::Alert(a) => {
            field(sets, &mut a.message);
        }
        Event::Dns(d) => {
            if let Some(err) = &mut d.error {
                field(sets, err);
            }
        }
        Event::Fork(f) => {
            field(sets, &mut f.proc.comm);
        }
        Event::Unix(u) => {
            field(sets, &mut u.path);
        }
        Event::File(f) => {
            field(sets, &mut f.path);
        }
        Event::Exit(_)
        | Event::Connect(_)
        | Event::Send(_)
        | Event::Socket(_)
        | Event::Tamper(_)
        | Event::Loss(_)
        | Event::End(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use data_encoding::{BASE32, BASE64, BASE64URL, HEXLOWER, HEXUPPER};

    use super::*;
    use crate::event::{Exec, Proc, Start, Ts};

    const VALUE: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn sets() -> Vec<SecretSet> {
        vec![
            SecretSet::new(&["AWS_*".to_string()], [("AWS_SECRET_ACCESS_KEY".to_string(), VALUE.to_string())]).unwrap(),
        ]
    }

    /// Every form of the value a reader could decode back, at a few alignments.
    fn forms() -> Vec<String> {
        let mut v = vec![VALUE.to_string(), HEXLOWER.encode(VALUE.as_bytes()), HEXUPPER.encode(VALUE.as_bytes())];
        for prefix in ["", "u:", "x"] {
            let bytes = [prefix.as_bytes(), VALUE.as_bytes(), b"\n"].concat();
            v.push(BASE64.encode(&bytes));
            v.push(BASE64URL.encode(&bytes));
            v.push(BASE32.encode(&bytes));
        }
        v
    }

    /// No 16-character stretch of any form survives.
    fn assert_clean(s: &str) {
        for f in forms() {
            for w in f.as_bytes().windows(16) {
                assert!(!s.as_bytes().windows(16).any(|x| x == w), "{s:?} holds part of {f:?}");
            }
        }
    }

    #[test]
    fn raw_hex_base32_and_base64_forms_are_replaced_in_text() {
        let s = sets();
        for f in forms() {
            for wrap in [f.clone(), format!("k={f}&x=1"), format!("cannot run {f}-x"), format!("é{f}é")] {
                let out = text(&s, &wrap);
                assert_clean(&out);
                assert!(out.contains("wJ…(40 chars)"), "{wrap} -> {out}");
            }
        }
        assert_eq!(text(&s, &format!("k={VALUE}")), "k=wJ…(40 chars)");
        assert_eq!(text(&s, &format!("h={}", HEXLOWER.encode(VALUE.as_bytes()))), "h=[hex of wJ…(40 chars)]");
        assert!(matches!(text(&s, "nothing here"), Cow::Borrowed(_)));
        // A chunk of the value (an attacker's piece at a time) too.
        assert_clean(&text(&s, &format!("p={}", &VALUE[5..30])));
    }

    #[test]
    fn every_text_field_of_an_event_is_redacted() {
        let s = sets();
        let hex = HEXLOWER.encode(VALUE.as_bytes());
        let b64 = BASE64.encode(VALUE.as_bytes());
        let mut start = Event::Start(Start {
            ts: Ts(0),
            schema: 1,
            watcher: "0".into(),
            mode: "run".into(),
            command: vec!["sh".into(), "-c".into(), format!("echo {VALUE} {hex} {b64}")],
            pid: 1,
            sensors: vec![],
            resolvers: vec![],
            registries: Default::default(),
            registry_sources: Vec::new(),
            proxy_sources: Vec::new(),
            policy: None,
            policy_yaml: None,
            job: None,
            project: None,
        });
        event(&s, &mut start);
        let line = serde_json::to_string(&start).unwrap();
        assert_clean(&line);
        let mut exec = Event::Exec(Exec {
            ts: Ts(0),
            proc: Proc { pid: 2, ppid: 1, comm: "curl".into(), uid: 0 },
            filename: format!("/tmp/{VALUE}-x"),
            argv: vec!["curl".into(), format!("-d{b64}"), format!("-H{hex}")],
            argv_truncated: false,
            argv_redacted: false,
            cgroup_id: 0,
            env: Default::default(),
            killed: false,
            shell: false,
            cwd: Some(format!("/w/{hex}")),
            held: false,
            script: false,
            facts: None,
        });
        event(&s, &mut exec);
        let line = serde_json::to_string(&exec).unwrap();
        assert_clean(&line);
        assert!(line.contains("\"argv_redacted\":true"), "{line}");
        // Nothing protected: nothing changes.
        let mut plain = exec.clone();
        event(&[], &mut plain);
        assert_eq!(plain, exec);
    }
}
