//! Discovery with the real package managers (npm from the machine, the others from
//! scripts/install-prereqs.sh under /opt/watcher-lab/pm; a test says so and returns when its
//! tool is not installed), and the workspace rules: nothing of the working directory runs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tests::clean_ctx;
use super::*;

fn lab_pm() -> PathBuf {
    PathBuf::from(std::env::var("WATCHER_LAB_DIR").unwrap_or_else(|_| "/opt/watcher-lab".into())).join("pm")
}

/// `dir/tool` when installed, else a note and `None`.
fn lab_tool(dir: &str, tool: &str) -> Option<PathBuf> {
    let p = lab_pm().join(dir).join(tool);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("{} not installed (scripts/install-prereqs.sh); skipping", p.display());
        None
    }
}

/// The system PATH with `first` in front.
fn path_with(first: &[&Path]) -> String {
    let mut parts: Vec<String> = first.iter().map(|p| p.display().to_string()).collect();
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

fn write(path: impl AsRef<Path>, text: &str) {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn executable(path: impl AsRef<Path>, text: &str) {
    write(&path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `program args` printed, trimmed, run in `/` (where no project file is read).
fn output_in_root(program: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(program).args(args).current_dir("/").envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "{program:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn host(url: &str) -> String {
    url_host(url).unwrap().unwrap()
}

fn sources(pm: PackageManager, ctx: &Ctx) -> Vec<RegistrySource> {
    resolve_sources_in(pm, ctx).unwrap_or_else(|e| panic!("{pm}: {e}"))
}

fn find<'a>(s: &'a [RegistrySource], host: &str) -> &'a RegistrySource {
    s.iter().find(|s| s.host == host).unwrap_or_else(|| panic!("{host} not in {s:?}"))
}

fn npm_available() -> bool {
    Command::new("npm").arg("--version").output().is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------------------------
// The workspace never runs

/// A `pip/` package in the working directory (what `python3 -c "from pip._internal..."` in the
/// cwd imported as root before the step): not imported, its hosts not allowed.
#[test]
fn a_pip_package_in_the_working_directory_is_not_imported() {
    if Command::new("python3").args(["-c", PIP_DEFAULT_INDEX_SNIPPET]).current_dir("/").output().is_err() {
        eprintln!("python3 with pip not installed; skipping");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let marker = ws.path().join("IMPORTED");
    let planted = format!(
        "open({:?}, 'w').write('x')\nclass PyPI:\n    simple_url = 'https://attacker-index.test/simple'\n    file_storage_domain = 'attacker-files.test'\n",
        marker.display().to_string()
    );
    write(ws.path().join("pip/__init__.py"), &format!("open({:?}, 'w').write('x')\n", marker.display().to_string()));
    write(ws.path().join("pip/_internal/__init__.py"), "");
    write(ws.path().join("pip/_internal/models/__init__.py"), "");
    write(ws.path().join("pip/_internal/models/index.py"), &planted);
    let ctx = clean_ctx(ws.path()).set("PIP_CONFIG_FILE", "/dev/null").set("PYTHONPATH", ws.path().to_str().unwrap());
    let hosts = resolve_in(PackageManager::Pip, &ctx).unwrap();
    assert!(!marker.exists(), "the workspace's pip package was imported");
    assert!(hosts.iter().all(|h| !h.contains("attacker")), "{hosts:?}");
    // And the answer is pip's own default, as pip prints it in /.
    let printed = output_in_root(Path::new("python3"), &["-I", "-c", PIP_DEFAULT_INDEX_SNIPPET], &[]);
    let index = printed.split_whitespace().next().unwrap();
    assert!(hosts.contains(&host(index)), "{hosts:?} vs {printed}");
}

/// An npm shim in node_modules/.bin of the checkout, first on PATH by absolute or relative
/// entry, or linked from outside: never started.
#[test]
fn an_npm_shim_in_the_working_directory_is_not_run() {
    let ws = tempfile::tempdir().unwrap();
    let marker = ws.path().join("RAN");
    let shim = format!("#!/bin/sh\ntouch {}\necho '{{\"registry\":\"https://attacker.test/\"}}'\n", marker.display());
    executable(ws.path().join("node_modules/.bin/npm"), &shim);
    let links = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(ws.path().join("node_modules/.bin/npm"), links.path().join("npm")).unwrap();
    let bin = ws.path().join("node_modules/.bin");
    let path = format!("node_modules/.bin:{}:{}:{}", bin.display(), links.path().display(), path_with(&[]));
    let ctx = clean_ctx(ws.path()).set("PATH", path.clone());
    match resolve_in(PackageManager::Npm, &ctx) {
        Ok(hosts) => assert!(hosts.iter().all(|h| !h.contains("attacker")), "{hosts:?}"),
        Err(e) => assert!(matches!(e, RegistryError::ToolMissing { .. }), "{e}"),
    }
    assert!(!marker.exists(), "the workspace's npm shim ran");
    // With no npm outside the checkout, the error says which one was refused and why.
    let only_ws = format!("{}:{}", bin.display(), links.path().display());
    let e = resolve_in(PackageManager::Npm, &clean_ctx(ws.path()).set("PATH", only_ws)).unwrap_err().to_string();
    assert!(e.contains("belongs to the checkout"), "{e}");
    assert!(e.contains(&bin.join("npm").display().to_string()), "{e}");
    assert!(!marker.exists());
}

/// NODE_OPTIONS and npm's `node-options` would load a file of the checkout into npm.
#[test]
fn code_loading_variables_do_not_reach_the_tools() {
    if !npm_available() {
        eprintln!("npm not installed; skipping");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let marker = ws.path().join("LOADED");
    write(
        ws.path().join("evil.js"),
        &format!("require('fs').writeFileSync({:?}, 'x')\n", marker.display().to_string()),
    );
    let opt = format!("--require {}", ws.path().join("evil.js").display());
    let ctx = clean_ctx(ws.path()).set("NODE_OPTIONS", opt.clone()).set("npm_config_node_options", opt);
    resolve_in(PackageManager::Npm, &ctx).unwrap();
    assert!(!marker.exists(), "NODE_OPTIONS loaded the checkout's code");
}

// ---------------------------------------------------------------------------------------------
// npm, pnpm, yarn, bun

#[test]
fn npm_project_npmrc_is_attributed_to_its_file() {
    if !npm_available() {
        eprintln!("npm not installed; skipping");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    write(ws.path().join("package.json"), "{\"name\":\"p\",\"version\":\"1.0.0\"}");
    // A checkout (the git work tree) whose package is built from a subdirectory.
    std::fs::create_dir_all(ws.path().join(".git")).unwrap();
    write(ws.path().join(".npmrc"), "registry=http://127.0.0.1:4873/\n@corp:registry=\"http://corp.test:4874/\"\n");
    std::fs::create_dir_all(ws.path().join("sub")).unwrap();
    let ctx = clean_ctx(&ws.path().join("sub")).set("HOME", home.path().to_str().unwrap());
    let s = sources(PackageManager::Npm, &ctx);
    let local = find(&s, "127.0.0.1");
    assert!(local.workspace, "{local:?}");
    assert_eq!(local.from, format!("{} (registry)", ws.path().join(".npmrc").display()));
    assert!(find(&s, "corp.test").workspace);
    // npm's default is replaced, not added to.
    let default = host(&output_in_root(
        Path::new("npm"),
        &["config", "get", "registry"],
        &[("HOME", home.path().to_str().unwrap())],
    ));
    assert!(s.iter().all(|x| x.host != default || x.tool != "npm"), "{s:?}");
    // The environment outranks the project's file.
    let ctx = ctx.set("npm_config_registry", "http://env-registry.test/");
    let s = sources(PackageManager::Npm, &ctx);
    assert!(!find(&s, "env-registry.test").workspace);
    assert!(s.iter().all(|x| x.host != "127.0.0.1" || x.tool != "npm"), "{s:?}");
}

#[test]
fn pnpm_default_and_project_npmrc() {
    let Some(pnpm) = lab_tool("bin", "pnpm") else { return };
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let ws = tempfile::tempdir().unwrap();
    write(ws.path().join("package.json"), "{\"name\":\"p\",\"version\":\"1.0.0\"}");
    let ctx = clean_ctx(ws.path()).set("HOME", h).set("PATH", path_with(&[pnpm.parent().unwrap()]));
    let expected = host(&output_in_root(&pnpm, &["config", "get", "registry"], &[("HOME", h)]));
    let s = sources(PackageManager::Pnpm, &ctx);
    assert_eq!(s[0].host, expected);
    assert!(!s[0].workspace && s[0].from.starts_with("`pnpm config list --json` in /"), "{s:?}");
    write(ws.path().join(".npmrc"), "registry=http://pnpm-mirror.test:4873/\n");
    let s = sources(PackageManager::Pnpm, &ctx);
    assert_eq!(s[0].host, "pnpm-mirror.test");
    assert!(s[0].workspace);
    assert!(s.iter().all(|x| x.host != expected), "{s:?}");
}

#[test]
fn yarn_classic_default_is_yarns_own_and_rc_files_count() {
    let Some(yarn) = lab_tool("bin", "yarn") else { return };
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let ws = tempfile::tempdir().unwrap();
    write(ws.path().join("package.json"), "{\"name\":\"p\",\"version\":\"1.0.0\"}");
    let ctx = clean_ctx(ws.path()).set("HOME", h).set("PATH", path_with(&[yarn.parent().unwrap()]));
    let expected = host(&output_in_root(&yarn, &["config", "get", "registry"], &[("HOME", h)]));
    let s = sources(PackageManager::Yarn, &ctx);
    assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), [expected.as_str()], "{s:?}");
    // `registries: [npm]` covers yarn too when yarn is installed.
    let npm = sources(PackageManager::Npm, &ctx);
    assert_eq!(find(&npm, &expected).tool, "yarn", "{npm:?}");
    write(
        ws.path().join(".yarnrc"),
        "registry \"http://yarn-mirror.test:4873/\"\n\"@corp:registry\" \"http://corp.test/\"\n",
    );
    write(ws.path().join(".npmrc"), "registry=http://npm-side.test/\n");
    let s = sources(PackageManager::Yarn, &ctx);
    let hosts: Vec<&str> = s.iter().map(|x| x.host.as_str()).collect();
    assert_eq!(hosts, ["yarn-mirror.test", "corp.test", "npm-side.test"], "{s:?}");
    assert!(s.iter().all(|x| x.workspace));
    assert_eq!(s[0].from, format!("{} (registry)", ws.path().join(".yarnrc").display()));
}

#[test]
fn yarn_berry_reads_yarnrc_yml_and_never_runs_the_projects_yarn() {
    let Some(berry) = lab_tool("berry-bin", "yarn") else { return };
    let Some(classic) = lab_tool("bin", "yarn") else { return };
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let marker = ws.path().join("RAN");
    write(ws.path().join("package.json"), "{\"name\":\"p\",\"version\":\"1.0.0\",\"packageManager\":\"yarn@4.18.1\"}");
    executable(
        ws.path().join(".yarn/releases/yarn.cjs"),
        &format!("require('fs').writeFileSync({:?}, 'x'); console.log('9.9.9')\n", marker.display().to_string()),
    );
    write(ws.path().join(".yarnrc.yml"), "yarnPath: .yarn/releases/yarn.cjs\n");
    // The berry on PATH: its own default.
    let ctx = clean_ctx(ws.path()).set("HOME", h).set("PATH", path_with(&[berry.parent().unwrap()]));
    let expected = host(&output_in_root(&berry, &["config", "get", "npmRegistryServer"], &[("HOME", h)]));
    let s = sources(PackageManager::Yarn, &ctx);
    assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), [expected.as_str()], "{s:?}");
    assert!(s[0].from.contains("yarn config get npmRegistryServer"), "{s:?}");
    // A classic yarn on PATH cannot answer for a berry project, and the project's yarn is not run.
    let ctx_classic = clean_ctx(ws.path()).set("HOME", h).set("PATH", path_with(&[classic.parent().unwrap()]));
    let e = resolve_in(PackageManager::Yarn, &ctx_classic).unwrap_err().to_string();
    assert!(e.contains("yarn 2+ project") && e.contains("npmRegistryServer"), "{e}");
    // The project's file names the registry: attributed to it.
    write(
        ws.path().join(".yarnrc.yml"),
        "yarnPath: .yarn/releases/yarn.cjs\nnpmRegistryServer: \"http://berry-mirror.test:4873\"\nnpmScopes:\n  corp:\n    npmRegistryServer: \"http://corp.test\"\n",
    );
    for ctx in [&ctx, &ctx_classic] {
        let s = sources(PackageManager::Yarn, ctx);
        assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), ["berry-mirror.test", "corp.test"], "{s:?}");
        assert!(s[0].workspace);
        assert_eq!(
            s[1].from,
            format!("{} (npmScopes.corp.npmRegistryServer)", ws.path().join(".yarnrc.yml").display())
        );
    }
    assert!(!marker.exists(), "the project's yarnPath ran");
}

#[test]
fn bun_reads_bunfig_and_falls_back_to_npms_configuration() {
    let Some(bun) = lab_tool("bin", "bun") else { return };
    if !npm_available() {
        eprintln!("npm not installed; skipping");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let ws = tempfile::tempdir().unwrap();
    write(ws.path().join("package.json"), "{\"name\":\"p\",\"version\":\"1.0.0\"}");
    let ctx = clean_ctx(ws.path()).set("HOME", h).set("PATH", path_with(&[bun.parent().unwrap()]));
    let npm_default = host(&output_in_root(Path::new("npm"), &["config", "get", "registry"], &[("HOME", h)]));
    let s = sources(PackageManager::Bun, &ctx);
    assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), [npm_default.as_str()], "{s:?}");
    write(
        ws.path().join("bunfig.toml"),
        "[install]\nregistry = { url = \"http://bun-mirror.test:4873/\", token = \"x\" }\n[install.scopes]\ncorp = \"http://corp.test/\"\n",
    );
    let s = sources(PackageManager::Bun, &ctx);
    assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), ["bun-mirror.test", "corp.test"], "{s:?}");
    assert!(s.iter().all(|x| x.workspace));
    assert_eq!(s[0].from, format!("{} (install.registry)", ws.path().join("bunfig.toml").display()));
    write(ws.path().join("bunfig.toml"), "[install\nregistry = 1\n");
    let e = resolve_in(PackageManager::Bun, &ctx).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: not valid TOML", ws.path().join("bunfig.toml").display())), "{e}");
}

#[test]
fn an_explicit_tool_that_is_missing_is_an_error_and_an_ecosystem_member_is_skipped() {
    let ws = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let ctx = clean_ctx(ws.path()).set("PATH", empty.path().to_str().unwrap());
    for (pm, tool) in [(PackageManager::Yarn, "yarn"), (PackageManager::Uv, "uv"), (PackageManager::Poetry, "poetry")] {
        let e = resolve_in(pm, &ctx).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{tool} is not installed or not on PATH: cannot resolve the {pm} registry for policy registries: [{pm}]"
            )
        );
    }
    if npm_available() {
        // npm alone on PATH: `npm` still resolves (pnpm, yarn and bun are not there).
        let npm_dir = PathBuf::from(output_in_root(Path::new("sh"), &["-c", "dirname \"$(command -v npm)\""], &[]));
        let ctx = clean_ctx(ws.path()).set("PATH", npm_dir.to_str().unwrap());
        let s = sources(PackageManager::Npm, &ctx);
        assert!(s.iter().all(|x| x.tool == "npm"), "{s:?}");
    }
}

#[test]
fn an_oversized_config_file_is_refused_with_its_name() {
    if !npm_available() {
        eprintln!("npm not installed; skipping");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    write(ws.path().join("package.json"), "{}");
    let big = "x".repeat(MAX_CONFIG_FILE_BYTES as usize + 1);
    write(ws.path().join(".npmrc"), &big);
    let e = resolve_in(PackageManager::Npm, &clean_ctx(ws.path())).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: larger than", ws.path().join(".npmrc").display())), "{e}");
}

// ---------------------------------------------------------------------------------------------
// pip, uv, poetry

#[test]
fn pip_site_config_of_a_workspace_venv_is_attributed() {
    let ws = tempfile::tempdir().unwrap();
    let venv = ws.path().join(".venv");
    write(venv.join("pyvenv.cfg"), "home = /usr/bin\n");
    executable(venv.join("bin/pip"), "#!/bin/sh\nexit 1\n");
    write(
        venv.join("pip.conf"),
        "[global]\nindex-url = https://venv-index.test/simple\n[install]\nextra-index-url = https://venv-extra.test/simple\n",
    );
    let user = tempfile::tempdir().unwrap();
    let path = path_with(&[&venv.join("bin")]);
    let ctx = clean_ctx(ws.path()).set("PATH", path).set("XDG_CONFIG_HOME", user.path().to_str().unwrap());
    let s = match resolve_sources_in(PackageManager::Pip, &ctx) {
        Ok(s) => s,
        Err(RegistryError::ToolMissing { .. }) => return eprintln!("pip not installed; skipping"),
        Err(e) => panic!("{e}"),
    };
    let index = s.iter().find(|x| x.tool == "pip" && x.host == "venv-index.test").expect("venv index");
    assert!(index.workspace);
    assert_eq!(index.from, format!("{} (global.index-url)", venv.join("pip.conf").display()));
    assert!(s.iter().any(|x| x.host == "venv-extra.test" && x.workspace), "{s:?}");
}

#[test]
fn uv_states_its_default_index_and_reads_uv_toml() {
    let Some(uv) = lab_tool("bin", "uv") else { return };
    let help = output_in_root(&uv, &["pip", "install", "--help"], &[]);
    let default = uv_help_default(&help).expect("uv names its default index");
    let ws = tempfile::tempdir().unwrap();
    let ctx = clean_ctx(ws.path()).set("PATH", path_with(&[uv.parent().unwrap()]));
    let s = sources(PackageManager::Uv, &ctx);
    assert_eq!(s[0].host, host(&default), "{s:?}");
    assert!(s[0].from.contains("uv pip install --help"));
    write(
        ws.path().join("uv.toml"),
        "index-url = \"https://uv-index.test/simple\"\nextra-index-url = [\"https://uv-extra.test/simple\"]\n[[index]]\nname = \"corp\"\nurl = \"https://corp.test/simple\"\n",
    );
    let s = sources(PackageManager::Uv, &ctx);
    assert_eq!(
        s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(),
        ["uv-index.test", "uv-extra.test", "corp.test"],
        "{s:?}"
    );
    assert!(s.iter().all(|x| x.workspace));
    // pyproject's [tool.uv] counts when there is no uv.toml.
    std::fs::remove_file(ws.path().join("uv.toml")).unwrap();
    write(
        ws.path().join("pyproject.toml"),
        "[project]\nname = \"p\"\n[[tool.uv.index]]\nurl = \"https://py-index.test/simple\"\ndefault = true\n",
    );
    let s = sources(PackageManager::Uv, &ctx);
    assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), ["py-index.test"], "{s:?}");
    assert_eq!(s[0].from, format!("{} (index[0].url)", ws.path().join("pyproject.toml").display()));
    let s = sources(PackageManager::Uv, &ctx.clone().set("UV_DEFAULT_INDEX", "https://env-index.test/simple"));
    assert_eq!(s[0].host, "env-index.test");
}

#[test]
fn poetry_sources_replace_pypi_only_when_primary() {
    let Some(poetry) = lab_tool("bin", "poetry") else { return };
    let ws = tempfile::tempdir().unwrap();
    let ctx = clean_ctx(ws.path()).set("PATH", path_with(&[poetry.parent().unwrap()]));
    write(
        ws.path().join("pyproject.toml"),
        "[tool.poetry]\nname = \"p\"\n[[tool.poetry.source]]\nname = \"corp\"\nurl = \"https://corp.test/simple\"\npriority = \"supplemental\"\n",
    );
    let s = match resolve_sources_in(PackageManager::Poetry, &ctx) {
        Ok(s) => s,
        Err(e) => return eprintln!("poetry's PyPI needs pip's default ({e}); skipping"),
    };
    assert_eq!(s[0].host, "corp.test");
    assert!(s[0].workspace && s[0].from.contains("tool.poetry.source[0] corp"), "{s:?}");
    assert!(s.len() >= 3, "PyPI's hosts are added for a supplemental source: {s:?}");
    write(
        ws.path().join("pyproject.toml"),
        "[tool.poetry]\nname = \"p\"\n[[tool.poetry.source]]\nname = \"corp\"\nurl = \"https://corp.test/simple\"\n",
    );
    let s = sources(PackageManager::Poetry, &ctx);
    assert_eq!(s.iter().map(|x| x.host.as_str()).collect::<Vec<_>>(), ["corp.test"], "{s:?}");
}
