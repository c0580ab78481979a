//! The step's own project, read when the step starts: its working directory and the
//! `package.json` files of the root project and its workspaces. Their lifecycle scripts
//! (`postinstall: npm run build`) are the user's own code, not a dependency's install script.
//! Bounds: `package.json` files up to 1 MiB, at most 1000 workspaces, workspace globs matched
//! up to 4 directories deep (never inside node_modules or dot directories).
use std::path::{Path, PathBuf};

use crate::event::Project;

const MAX_JSON: u64 = 1 << 20;
const MAX_WORKSPACES: usize = 1000;
const MAX_DEPTH: usize = 4;

/// The project of the current directory (the step's command inherits it).
pub fn detect() -> Option<Project> {
    let cwd = std::env::current_dir().ok()?;
    Some(of_dir(&cwd))
}

pub fn of_dir(cwd: &Path) -> Project {
    let mut package_jsons = Vec::new();
    let root = cwd.join("package.json");
    if let Some(v) = read_json(&root) {
        package_jsons.push(root.to_string_lossy().into_owned());
        let patterns: Vec<String> = match v.get("workspaces") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            Some(serde_json::Value::Object(o)) => o
                .get("packages")
                .and_then(|p| p.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if !patterns.is_empty() {
            let mut b = globset::GlobSetBuilder::new();
            for p in &patterns {
                let p = p.trim_start_matches("./").trim_end_matches('/');
                if let Ok(g) = globset::GlobBuilder::new(p).literal_separator(true).build() {
                    b.add(g);
                }
            }
            if let Ok(set) = b.build() {
                let mut dirs = Vec::new();
                walk(cwd, cwd, 0, &set, &mut dirs);
                for d in dirs {
                    let pj = d.join("package.json");
                    if pj.is_file() {
                        package_jsons.push(pj.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    Project { cwd: cwd.to_string_lossy().into_owned(), package_jsons }
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    let m = std::fs::metadata(p).ok()?;
    if !m.is_file() || m.len() > MAX_JSON {
        return None;
    }
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn walk(root: &Path, dir: &Path, depth: usize, set: &globset::GlobSet, out: &mut Vec<PathBuf>) {
    if depth >= MAX_DEPTH || out.len() >= MAX_WORKSPACES {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "node_modules" || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        if let Ok(rel) = p.strip_prefix(root)
            && set.is_match(rel)
            && out.len() < MAX_WORKSPACES
        {
            out.push(p.clone());
        }
        walk(root, &p, depth + 1, set, out);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_and_workspaces() {
        let d = std::env::temp_dir().join(format!("watcher-project-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("packages/a")).unwrap();
        std::fs::create_dir_all(d.join("node_modules/b")).unwrap();
        std::fs::write(d.join("package.json"), r#"{"name":"r","workspaces":["packages/*"]}"#).unwrap();
        std::fs::write(d.join("packages/a/package.json"), "{}").unwrap();
        std::fs::write(d.join("node_modules/b/package.json"), "{}").unwrap();
        let p = super::of_dir(&d);
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(
            p.package_jsons,
            vec![d.join("package.json").display().to_string(), d.join("packages/a/package.json").display().to_string()]
        );
    }
}
