//! The process tree as display rows, shared by the text and Markdown reports. A big step (a
//! 500-process `npm ci`) stays readable: subtrees in which nothing happened worth a look are
//! collapsed into one line, but a process with an alert, a connection or a DNS query, the
//! start of an install script, a killed process, and every ancestor of those are always shown.
use std::collections::{HashMap, HashSet};

use super::{
    live::{safe, shorten},
    model::Report,
};

/// Up to this many processes every process is shown.
pub const SHOW_ALL: usize = 30;

pub enum Row {
    Proc {
        pid: u32,
    },
    /// `count` boring processes (in subtrees hanging from the row above) by name.
    Collapsed {
        count: usize,
        names: Vec<(String, usize)>,
    },
}

/// A row with its tree-drawing prefix (`│  ├─ `).
pub struct Line {
    pub prefix: String,
    pub row: Row,
}

fn interesting_self(r: &Report, pid: u32) -> bool {
    let s = r.procs.get(&pid);
    let n = r.tree.get(pid);
    s.is_some_and(|s| s.alerts > 0 || s.connects > 0 || s.dns > 0 || s.killed)
        || n.is_some_and(|n| n.attribution.is_some())
}

pub fn lines(r: &Report) -> Vec<Line> {
    let order = |pid: &u32| r.procs.get(pid).map(|s| s.order).unwrap_or(u64::MAX);
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut roots = Vec::new();
    for (&pid, n) in r.tree.iter() {
        if n.ppid != pid && r.tree.get(n.ppid).is_some() {
            children.entry(n.ppid).or_default().push(pid);
        } else {
            roots.push(pid);
        }
    }
    for v in children.values_mut() {
        v.sort_by_key(|p| (order(p), *p));
    }
    roots.sort_by_key(|p| (order(p), *p));
    let show_all = r.tree.len() <= SHOW_ALL;
    // Subtree sizes and whether anything interesting is below (iterative post-order, bounded
    // against cycles a corrupt log could make).
    let mut size: HashMap<u32, usize> = HashMap::new();
    let mut keep: HashSet<u32> = HashSet::new();
    let mut visited: HashSet<u32> = HashSet::new();
    for &root in &roots {
        let mut stack = vec![(root, false)];
        while let Some((pid, done)) = stack.pop() {
            if done {
                let kids = children.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
                let kids: Vec<u32> = kids.iter().copied().filter(|k| size.contains_key(k)).collect();
                size.insert(pid, 1 + kids.iter().map(|k| size[k]).sum::<usize>());
                if show_all || interesting_self(r, pid) || kids.iter().any(|k| keep.contains(k)) {
                    keep.insert(pid);
                }
            } else if visited.insert(pid) {
                stack.push((pid, true));
                for &k in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
                    stack.push((k, false));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut names_of = |pid: u32, acc: &mut HashMap<String, usize>| {
        let mut stack = vec![pid];
        let mut seen = HashSet::new();
        while let Some(p) = stack.pop() {
            if !seen.insert(p) {
                continue;
            }
            *acc.entry(r.proc_name(p)).or_default() += 1;
            stack.extend(children.get(&p).map(Vec::as_slice).unwrap_or(&[]).iter().copied());
        }
    };
    // Depth-first, drawing the tree prefixes.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        pid: u32,
        prefix: &str,
        children: &HashMap<u32, Vec<u32>>,
        keep: &HashSet<u32>,
        size: &HashMap<u32, usize>,
        names_of: &mut dyn FnMut(u32, &mut HashMap<String, usize>),
        out: &mut Vec<Line>,
        depth: usize,
    ) {
        let kids: Vec<u32> = children
            .get(&pid)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|k| size.contains_key(k))
            .collect();
        let shown: Vec<u32> = kids.iter().copied().filter(|k| keep.contains(k)).collect();
        let hidden: Vec<u32> = kids.iter().copied().filter(|k| !keep.contains(k)).collect();
        let n = shown.len() + usize::from(!hidden.is_empty());
        for (i, &k) in shown.iter().enumerate() {
            let last = i + 1 == n;
            out.push(Line {
                prefix: format!("{prefix}{}", if last { "└─ " } else { "├─ " }),
                row: Row::Proc { pid: k },
            });
            if depth < 200 {
                let p = format!("{prefix}{}", if last { "   " } else { "│  " });
                walk(k, &p, children, keep, size, names_of, out, depth + 1);
            }
        }
        if !hidden.is_empty() {
            let mut acc = HashMap::new();
            for &h in &hidden {
                names_of(h, &mut acc);
            }
            let count = acc.values().sum();
            let mut names: Vec<(String, usize)> = acc.into_iter().collect();
            names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            out.push(Line { prefix: format!("{prefix}└─ "), row: Row::Collapsed { count, names } });
        }
    }
    for &root in &roots {
        if !keep.contains(&root) && !show_all {
            // A whole boring tree next to interesting ones: one line.
            let mut acc = HashMap::new();
            names_of(root, &mut acc);
            let count = acc.values().sum();
            let mut names: Vec<(String, usize)> = acc.into_iter().collect();
            names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            out.push(Line { prefix: String::new(), row: Row::Collapsed { count, names } });
            continue;
        }
        out.push(Line { prefix: String::new(), row: Row::Proc { pid: root } });
        walk(root, "", &children, &keep, &size, &mut names_of, &mut out, 0);
    }
    out
}

/// `… 37 more processes: node ×20, sh ×17, …` (names escaped).
pub fn collapsed_text(count: usize, names: &[(String, usize)]) -> String {
    let mut parts: Vec<String> = names.iter().take(5).map(|(n, c)| format!("{} ×{c}", safe(n))).collect();
    if names.len() > 5 {
        parts.push("…".into());
    }
    format!("… {count} more process{}: {}", if count == 1 { "" } else { "es" }, parts.join(", "))
}

/// `1234 curl -sS http://…` plus what it did; untrusted text escaped for a terminal.
pub fn proc_text(r: &Report, pid: u32) -> (String, Vec<String>) {
    let n = r.tree.get(pid);
    let name = r.proc_name(pid);
    let argv = n.map(|n| n.argv.iter().skip(1).map(|a| safe(a)).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    let head = if argv.is_empty() {
        format!("{pid} {}", safe(&name))
    } else {
        format!("{pid} {} {}", safe(&name), shorten(&argv, 100))
    };
    let mut notes = Vec::new();
    if let Some(a) = n.and_then(|n| n.attribution.as_ref()) {
        notes.push(format!("[{}]", safe(&a.label())));
    }
    if let Some(s) = r.procs.get(&pid) {
        if s.connects > 0 {
            notes.push(format!("{} connection{}", s.connects, if s.connects == 1 { "" } else { "s" }));
        }
        if s.dns > 0 {
            notes.push(format!("{} DNS", s.dns));
        }
        if s.killed {
            notes.push("killed".into());
        }
        if let Some(c) = s.exit_code.filter(|c| *c != 0) {
            notes.push(format!("exit {c}"));
        }
        if s.alerts > 0 {
            notes.push(format!("{} alert{}", s.alerts, if s.alerts == 1 { "" } else { "s" }));
        }
    }
    (head, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Connect, Event, Exec, Fork, Proc, Proto, Ts};

    fn fork(pid: u32, ppid: u32) -> Event {
        Event::Fork(Fork { ts: Ts(0), proc: Proc { pid, ppid, comm: "sh".into(), uid: 0 } })
    }

    fn exec(pid: u32, ppid: u32, file: &str) -> Event {
        Event::Exec(Exec {
            ts: Ts(0),
            proc: Proc { pid, ppid, comm: file.rsplit('/').next().unwrap().into(), uid: 0 },
            filename: file.into(),
            argv: vec![file.into()],
            argv_truncated: false,
            argv_redacted: false,
            cgroup_id: 0,
            env: Default::default(),
            killed: false,
            shell: false,
            cwd: None,
            held: false,
            script: false,
            facts: None,
        })
    }

    fn render(r: &Report) -> Vec<String> {
        lines(r)
            .into_iter()
            .map(|l| match l.row {
                Row::Proc { pid } => format!("{}{pid}", l.prefix),
                Row::Collapsed { count, names } => format!("{}{}", l.prefix, collapsed_text(count, &names)),
            })
            .collect()
    }

    #[test]
    fn boring_subtrees_collapse_but_paths_to_interesting_processes_stay() {
        let mut r = Report::default();
        r.add(&exec(10, 1, "/usr/bin/npm"));
        // 200 boring children, each with a boring grandchild.
        for i in 0..200 {
            let c = 100 + 2 * i;
            r.add(&fork(c, 10));
            r.add(&exec(c, 10, "/usr/bin/node"));
            r.add(&fork(c + 1, c));
            r.add(&exec(c + 1, c, "/bin/true"));
        }
        // One grandchild connects somewhere: it and its parent are shown.
        r.add(&Event::Connect(Connect {
            ts: Ts(0),
            proc: Proc { pid: 151, ppid: 150, comm: "true".into(), uid: 0 },
            daddr: "192.0.2.1".parse().unwrap(),
            dport: 443,
            proto: Proto::Tcp,
            op: "connect".into(),
            allowed: true,
        }));
        let got = render(&r);
        assert_eq!(got, ["10", "├─ 150", "│  └─ 151", "└─ … 398 more processes: node ×199, true ×199"], "{got:#?}");
        // Small trees are shown whole.
        let mut small = Report::default();
        small.add(&exec(10, 1, "/usr/bin/npm"));
        small.add(&fork(11, 10));
        small.add(&exec(11, 10, "/bin/true"));
        assert_eq!(render(&small), ["10", "└─ 11"]);
    }
}
